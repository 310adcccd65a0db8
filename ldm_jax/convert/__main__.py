"""Convert PyTorch weights into an Orbax checkpoint of ours.

  python -m ldm_jax.convert sd-v1-4.ckpt --config=configs/architectures.py:sd_v1_unet --out=DIR
  python -m ldm_jax.convert ./stable-diffusion-v1-5 --subfolder=vae \
      --config=configs/architectures.py:sd_kl_f8 --out=DIR

The config's `network` (a UNet), `autoencoder` and `conditioner` blocks say what to build;
each is filled from SRC. With a whole LDM config (configs/ldm_*.py) the directory is also a model
that `sample.py --checkpoint=DIR` samples; its latent scale factor is the config's
`first_stage.scale_factor` (e.g. --config.first_stage.scale_factor=0.18215 for Stable
Diffusion), or the `scale_factor` a CompVis checkpoint stores.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from ldm_jax.convert import export
from ldm_jax.convert import load

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config with network / autoencoder / "
                                          "conditioner blocks.", lock_config=True)
_OUT = flags.DEFINE_string("out", None, "New directory for the converted checkpoint.")
_SUBFOLDER = flags.DEFINE_string("subfolder", None, "Subfolder of a diffusers pipeline "
                                 "folder (e.g. unet, vae).")
_USE_EMA = flags.DEFINE_bool("use_ema", False, "Take a CompVis checkpoint's EMA UNet weights.")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("Give exactly one SRC: a .ckpt/.safetensors file or a diffusers "
                         "folder.")
  source, config = argv[1], _CONFIG.value
  if not any(config.get(k) is not None for k in load.PARTS):
    raise app.UsageError(f"The config has none of the blocks {load.PARTS}.")
  try:
    export.check_new(_OUT.value)  # Before reading gigabytes.
    parts, config = load.import_parts(source, config, subfolder=_SUBFOLDER.value,
                                      use_ema=_USE_EMA.value)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    sys.exit(f"error: {e}")
  export.write(_OUT.value, parts, config)
  print(f"wrote {', '.join(parts)} to {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
