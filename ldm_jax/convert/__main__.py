"""Convert PyTorch weights into an Orbax checkpoint of ours.

  python -m ldm_jax.convert sd-v1-4.ckpt --config=configs/architectures.py:sd_v1_unet --out=DIR
  python -m ldm_jax.convert ./stable-diffusion-v1-5 --subfolder=vae \
      --config=configs/architectures.py:sd_kl_f8 --out=DIR

The config's `unet`, `autoencoder` and `conditioner` blocks say what to build; each is
filled from SRC. With a whole LDM config (configs/ldm_*.py) the directory is also a model
that `sample.py --checkpoint=DIR` samples; its latent scale factor is the config's
`first_stage.scale_factor` (e.g. --config.first_stage.scale_factor=0.18215 for Stable
Diffusion), or the `scale_factor` a CompVis checkpoint stores.
"""

import os

import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from ldm_jax.convert import export
from ldm_jax.convert import files
from ldm_jax.convert import load

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config with unet / autoencoder / "
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
  parts = {}
  if config.get("stage") == "ldm":
    config = _with_scale_factor(source, config)
  if config.get("unet") is not None:
    parts["unet"] = load.import_unet(source, config.unet, subfolder=_SUBFOLDER.value,
                                     use_ema=_USE_EMA.value)
  if config.get("autoencoder") is not None:
    parts["autoencoder"] = load.import_autoencoder(source, config.autoencoder,
                                                   subfolder=_SUBFOLDER.value)
  if config.get("conditioner") is not None:
    parts["conditioner"] = load.import_conditioner(source, config.conditioner)
  if not parts:
    raise app.UsageError("The config has no 'unet', 'autoencoder' or 'conditioner' block.")
  export.write(_OUT.value, parts, config)
  print(f"wrote {', '.join(parts)} to {_OUT.value}")


def _with_scale_factor(source: str, config):
  """The LDM config with first_stage.scale_factor from SRC's `scale_factor` entry when the
  config leaves it unset; a config without either is refused (sampling would need it)."""
  block = config.first_stage
  if block.get("source") == "pixels" or block.get("scale_factor") is not None:
    return config
  stored = None
  if os.path.isfile(source):
    stored = files.read_file(source).get("scale_factor")
  if stored is None:
    raise app.UsageError(
        f"{source} stores no scale_factor and the config's first_stage.scale_factor is "
        f"unset: pass --config.first_stage.scale_factor=... (Stable Diffusion: 0.18215).")
  config = config.copy_and_resolve_references()
  config.first_stage.scale_factor = float(np.asarray(stored).reshape(()))
  return config


if __name__ == "__main__":
  app.run(main)
