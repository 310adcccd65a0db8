"""Inpainting LDM: the mask (1 = hole) and the masked image's latents concatenated to the
latents (7 input channels on vq-f4), as CompVis / SD inpainting models.

  python train.py --config=configs/ldm_inpainting.py --workdir=DIR \
      --config.first_stage.path=<vq-f4 autoencoder workdir>
Masks are 1-3 random rectangles per image (10-50 % of each side), drawn in the training
step. TFDS `places365_small` is the default data (256 px). Variants: tiny.
"""

from configs import architectures
from configs import common


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False)
  unet = architectures.ldm_celebahq256_unet()
  unet.update(in_channels=7, out_channels=3, model_channels=256, channel_mult=(1, 2, 3, 4),
              attention_resolutions=(8, 4, 2), num_heads=8, num_head_channels=-1)
  config = common.ldm_stage_config(unet, autoencoder=architectures.vq_f4(),
                                   type="inpainting")
  config.data = common.data_config(name="places365_small", image_size=256, batch_size=32,
                                   crop="random", random_flip=True,
                                   eval_split="validation")
  config.num_steps = 400_000
  config.sampling.update(steps=50, per_row=4)
  if variant.tiny:
    common.tiny_data(config, "photos")
    common.shrink_ldm_stage(config)
  return config
