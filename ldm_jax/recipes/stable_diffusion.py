"""Text-to-image families: Stable Diffusion 1.x / 2.x (a frozen CLIP text encoder, kl-f8
latents scaled by 0.18215, 10% of the captions dropped for classifier-free guidance) and LDM
txt2img-1p4B (its BERT-style encoder trained with the UNet): what `python -m ldm_jax.convert`
writes beside a converted checkpoint, and the recipe that fine-tunes one
(configs/stable_diffusion.py re-exports `get_config`).

  python -m ldm_jax.convert v1-5-pruned-emaonly.safetensors --tokenizer=TOKENIZER --out=SD15
  python sample.py --checkpoint=SD15 --prompt="a red bicycle" --out=DIR
  python train.py --config=configs/stable_diffusion.py:pipeline=SD15,folder=/data/captioned \
      --workdir=RUN

Variants: model=v1 (SD 1.x, 512 px), v2 (SD 2.x base, 512 px, eps), v2_768 (SD 2.x 768-v,
v-prediction), ldm_txt2img (LDM-KL-8-G, 256 px, guidance 5); pipeline=DIR, a converted
pipeline whose VAE, text encoder (frozen, or for ldm_txt2img the start of the trained one)
and tokenizer the run uses and whose UNet it starts from; folder=DIR, captioned images
(configs/image_folder.py: `photo.txt` beside `photo.jpg`); tiny (a random tiny pipeline on
the digits' captions, for tests). Every family samples with Stable Diffusion's scheduler
settings (steps_offset 1, set_alpha_to_one False: CompVis' DDIM timesteps) and its schedule.
"""

import json
import os

import ml_collections

from ldm_jax.recipes import architectures
from ldm_jax.recipes import common

MODELS = {
    "v1": dict(unet=architectures.sd_v1_unet, text=architectures.sd_v1_text_encoder,
               pad="eos", size=512, prediction="eps"),
    "v2": dict(unet=architectures.sd_v2_unet, text=architectures.sd_v2_text_encoder,
               pad="0", size=512, prediction="eps"),
    "v2_768": dict(unet=architectures.sd_v2_unet, text=architectures.sd_v2_text_encoder,
                   pad="0", size=768, prediction="v"),
    "ldm_txt2img": dict(unet=architectures.ldm_txt2img_unet, text=architectures.ldm_bert,
                        pad=None, size=256, prediction="eps"),
}
SCALE_FACTOR = 0.18215


def get_config(arg=None):
  variant = common.parse_arg(arg, model="v1", pipeline="", folder="", tiny=False)
  if variant.model not in MODELS:
    raise ValueError(f"configs/stable_diffusion.py:model={variant.model}: expected one of "
                     f"{sorted(MODELS)}.")
  spec = MODELS[variant.model]
  trained = variant.model == "ldm_txt2img"  # Its text encoder trains with the UNet.
  config = common.ldm_stage_config(spec["unet"](), autoencoder=architectures.sd_kl_f8(),
                                   conditioner=spec["text"](),
                                   type="text" if trained else "frozen_text", dropout=0.1,
                                   pad=spec["pad"])
  config.first_stage.update(source="export", scale_factor=SCALE_FACTOR)
  config.diffusion.update(schedule="stable_diffusion", prediction=spec["prediction"])
  # MLPerf's SD recipe reads center crops (what a latent cache holds), unflipped.
  config.data = common.data_config(name="image_folder", image_size=spec["size"],
                                   batch_size=64, crop="center", random_flip=False,
                                   caption_key="caption")
  config.data.folder = variant.folder or None
  config.optimizer.update(learning_rate=1e-5, weight_decay=0.01)
  config.num_steps = 10_000
  config.sampling.update(sampler="ddim", steps=50, guidance_scale=5.0 if trained else 7.5,
                         steps_offset=1, set_alpha_to_one=False, per_row=4, prompts=(
                             "a photograph of an astronaut riding a horse",
                             "a watercolor painting of a lighthouse at night"))
  if variant.pipeline:
    _from_pipeline(config, os.path.abspath(os.path.expanduser(variant.pipeline)),
                   variant.model)
  if variant.tiny:
    common.tiny_data(config, "digits")
    config.data.update(label_key=None, crop="center", random_flip=False)
    config.conditioning.update(text_encoder=None if trained else "random", pad=None)
    common.shrink_ldm_stage(config)
    config.sampling.update(steps=2, prompts=("a handwritten digit one",))
  return config


def _from_pipeline(config: ml_collections.ConfigDict, directory: str, model: str) -> None:
  """Points `config` at a converted pipeline: its architectures, prediction, scale factor,
  image size and padding (from its config.json), its VAE, tokenizer and text encoder, and
  its UNet (and trained text encoder) as the run's start (`init_from`)."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"pipeline={directory!r} has no config.json: expected a "
                            f"directory written by `python -m ldm_jax.convert`.")
  with open(path) as f:
    saved = ml_collections.ConfigDict(json.load(f))
  if saved.conditioning.type != config.conditioning.type:
    raise ValueError(f"pipeline={directory!r} holds a conditioning.type="
                     f"{saved.conditioning.type!r} model; model={model} is "
                     f"{config.conditioning.type!r}: pass model=ldm_txt2img for LDM txt2img, "
                     f"v1 / v2 / v2_768 for Stable Diffusion.")
  for block in ("network", "autoencoder", "conditioner"):
    config[block] = saved[block]
  config.diffusion.update(prediction=saved.diffusion.prediction,
                          zero_terminal_snr=saved.diffusion.get("zero_terminal_snr", False))
  config.first_stage.update(path=directory, scale_factor=saved.first_stage.scale_factor)
  config.conditioning.update(tokenizer=os.path.join(directory, "tokenizer"),
                             pad=saved.conditioning.get("pad"))
  if config.conditioning.type == "frozen_text":
    config.conditioning.text_encoder = directory
  config.data.image_size = saved.data.image_size
  config.init_from = directory
