"""Convert PyTorch weights into an Orbax checkpoint of ours.

Whole text-to-image pipelines (Stable Diffusion 1.x / 2.x, LDM txt2img-1p4B; the architecture
is read off the weights, see ldm_jax/convert/pipeline.py):

  python -m ldm_jax.convert v1-5-pruned-emaonly.safetensors --tokenizer=TOKENIZER --out=DIR
  python -m ldm_jax.convert v2-1_768-ema-pruned.safetensors --tokenizer=TOKENIZER \
      --prediction=v --out=DIR
  python -m ldm_jax.convert ./stable-diffusion-2-1-base --out=DIR     (a diffusers folder)

Single parts, or any LDM, with a config naming what to build:

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
from ldm_jax.convert import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config with network / autoencoder / "
                                          "conditioner blocks; without it SRC is converted "
                                          "as a whole text-to-image pipeline.",
                                          lock_config=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Pipelines: the tokenizer files (CLIP "
                                 "vocab.json + merges.txt, e.g. a diffusers tokenizer/ "
                                 "folder; LDM txt2img: BERT's vocab.txt). Default: a diffusers "
                                 "folder's own tokenizer/.")
_PREDICTION = flags.DEFINE_enum("prediction", None, ["eps", "v"], "Pipelines: what the UNet "
                                "predicts (single files do not say; SD 2.x 768-v: v). "
                                "Default: a diffusers folder's scheduler setting, else eps.")
_OUT = flags.DEFINE_string("out", None, "New directory for the converted checkpoint.")
_SUBFOLDER = flags.DEFINE_string("subfolder", None, "Subfolder of a diffusers pipeline "
                                 "folder (e.g. unet, vae).")
_USE_EMA = flags.DEFINE_bool("use_ema", False, "Take a CompVis checkpoint's EMA UNet weights.")
flags.mark_flags_as_required(["out"])


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("Give exactly one SRC: a .ckpt/.safetensors file or a diffusers "
                         "folder.")
  source, config = argv[1], _CONFIG.value
  if config is None:
    if _SUBFOLDER.value:
      raise app.UsageError("--subfolder converts one part and needs --config; without it the "
                           "whole pipeline is converted.")
    try:
      config = pipeline.convert(source, _OUT.value, tokenizer=_TOKENIZER.value,
                                prediction=_PREDICTION.value, use_ema=_USE_EMA.value)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
      sys.exit(f"error: {e}")
    print(f"wrote a {config.conditioning.type} pipeline ({config.diffusion.prediction}-"
          f"prediction) to {_OUT.value}; sample it with\n  python sample.py "
          f"--checkpoint={_OUT.value} --prompt=\"...\" --out=SAMPLES")
    return
  if _TOKENIZER.value or _PREDICTION.value:
    raise app.UsageError("--tokenizer and --prediction are for whole pipelines (no --config).")
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
