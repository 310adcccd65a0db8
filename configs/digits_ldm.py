"""Latent diffusion on scikit-learn's handwritten digits: class- and caption-conditional.

Small enough for a CPU. This file holds the data part for now; the autoencoder, UNet and
training settings are added by the issues that build them.

  python -m ldm_jax.data --config=configs/digits_ldm.py --out=digits.png
  python -m ldm_jax.data --config=configs/digits_ldm.py:tiny --out=digits.png
"""

from configs import common


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False)
  config = common.base_config()
  config.data = common.data_config(
      name="digits",
      image_size=32,
      small_images="upscale",  # The digits are 8x8.
      crop="center",  # Digits are centred and square: random crops would cut strokes.
      random_flip=False,  # A flipped 3 is not a 3.
      label_key="label",
      caption_key="caption",
      batch_size=64,
      shuffle_buffer=2_000,  # Whole train split (1,437 images).
  )
  if variant.tiny:
    config.data.image_size = 16
    config.data.batch_size = 16
  return config
