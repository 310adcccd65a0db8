"""Stable Diffusion 1.x / 2.x: what a converted checkpoint samples with, and the recipe that
fine-tunes one (a frozen CLIP text encoder, kl-f8 latents scaled by 0.18215, 10% of the
captions dropped for classifier-free guidance).

  python -m ldm_jax.convert v1-5-pruned-emaonly.safetensors --tokenizer=TOKENIZER --out=SD15
  python sample.py --checkpoint=SD15 --prompt="a red bicycle" --out=DIR
  python -m ldm_jax.ldm.latent_cache \
      --config=configs/stable_diffusion.py:pipeline=SD15,folder=/data/captioned --out=CACHE
  python train.py --config=configs/stable_diffusion.py:pipeline=SD15,folder=/data/captioned \
      --workdir=RUN --config.data.name=<printed cache> --config.data.latent_key=moments

Variants: model=v1 (SD 1.x, 512 px), v2 (SD 2.x base, 512 px, eps), v2_768 (SD 2.x 768-v,
v-prediction); pipeline=DIR, a converted pipeline whose VAE, text encoder and tokenizer the
run uses and whose UNet it starts from; folder=DIR, captioned images (configs/image_folder.py:
`photo.txt` beside `photo.jpg`); tiny (a random tiny pipeline on the digits' captions, for
tests). The `convert` CLI writes this config, with the architecture it finds, beside the
weights it converts.
"""

from configs import architectures
from configs import common

MODELS = {
    "v1": dict(unet=architectures.sd_v1_unet, text=architectures.sd_v1_text_encoder,
               pad="eos", size=512, prediction="eps"),
    "v2": dict(unet=architectures.sd_v2_unet, text=architectures.sd_v2_text_encoder,
               pad="0", size=512, prediction="eps"),
    "v2_768": dict(unet=architectures.sd_v2_unet, text=architectures.sd_v2_text_encoder,
                   pad="0", size=768, prediction="v"),
}
SCALE_FACTOR = 0.18215


def get_config(arg=None):
  variant = common.parse_arg(arg, model="v1", pipeline="", folder="", tiny=False)
  if variant.model not in MODELS:
    raise ValueError(f"configs/stable_diffusion.py:model={variant.model}: expected one of "
                     f"{sorted(MODELS)}.")
  spec = MODELS[variant.model]
  config = common.ldm_stage_config(spec["unet"](), autoencoder=architectures.sd_kl_f8(),
                                   conditioner=spec["text"](), type="frozen_text",
                                   dropout=0.1, pad=spec["pad"])
  config.first_stage.update(source="export", scale_factor=SCALE_FACTOR)
  config.diffusion.update(schedule="stable_diffusion", prediction=spec["prediction"])
  if variant.pipeline:
    config.first_stage.path = variant.pipeline
    config.conditioning.update(text_encoder=variant.pipeline,
                               tokenizer=f"{variant.pipeline}/tokenizer")
    config.init_from = variant.pipeline
  # MLPerf's SD recipe reads center crops (what a latent cache holds), unflipped.
  config.data = common.data_config(name="image_folder", image_size=spec["size"],
                                   batch_size=64, crop="center", random_flip=False,
                                   caption_key="caption")
  config.data.folder = variant.folder or None
  config.optimizer.update(learning_rate=1e-5, weight_decay=0.01)
  config.num_steps = 10_000
  config.sampling.update(sampler="ddim", steps=50, guidance_scale=7.5, steps_offset=1,
                         set_alpha_to_one=False, per_row=4, prompts=(
                             "a photograph of an astronaut riding a horse",
                             "a watercolor painting of a lighthouse at night"))
  if variant.tiny:
    common.tiny_data(config, "digits")
    config.data.update(label_key=None, crop="center", random_flip=False)
    config.conditioning.update(text_encoder="random", pad=None)
    common.shrink_ldm_stage(config)
    config.sampling.update(steps=2, prompts=("a handwritten digit one",))
  return config

