"""Paired image -> image LDM (RGB -> thermal, photo -> depth, map -> photo, ...): the condition
image, through the same frozen autoencoder, concatenated to the target image's latents.

  python train.py --config=configs/ldm_paired.py:dataset=NAME,target=thermal,cond=rgb \
      --workdir=DIR --config.first_stage.path=<kl-f4 autoencoder workdir>
`dataset` is any TFDS dataset (or registered builder) with two image features of the same
size, `target` the one to generate and `cond` the one to condition on; both are cropped and
flipped together. The autoencoder must take the condition's channels too (set
`--config.conditioning.encode_condition=False` to concatenate resized pixels instead).
Variants: tiny (digits: the 3-class ink map as a gray image -> the digit; random tiny
autoencoder).
"""

from configs import architectures
from configs import common


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False, dataset="", target="image", cond="condition")
  unet = architectures.ldm_celebahq256_unet()  # kl-f4 latents at 64 px for 256 px images.
  unet.update(in_channels=6, out_channels=3)
  config = common.ldm_stage_config(unet, autoencoder=architectures.kl_f4(), type="image",
                                   key=variant.cond)
  config.data = common.data_config(name=variant.dataset or None, image_size=256,
                                   batch_size=16, crop="random", random_flip=True,
                                   image_key=variant.target, cond_image_keys=(variant.cond,))
  config.num_steps = 400_000
  config.sampling.update(steps=50, per_row=4)
  if variant.tiny:
    common.tiny_data(config, "digits")
    config.data.update(label_key=None, caption_key=None, cond_image_keys=("segmentation",))
    config.conditioning.key = "segmentation"
    common.shrink_ldm_stage(config)
  return config
