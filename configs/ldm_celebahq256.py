"""Unconditional LDM on CelebA-HQ 256 (the paper's LDM-4 on vq-f4 latents, 64x64x3).

  python train.py --config=configs/ldm_celebahq256.py --workdir=DIR \
      --config.first_stage.path=<vq-f4 autoencoder workdir>
TFDS's `celeb_a_hq/256` needs a manual download (`tfds build celeb_a_hq/256 --manual_dir=...`).
Variants: `tiny` (a random tiny autoencoder on photo patches, for tests).
"""

from configs import architectures
from configs import common


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False)
  config = common.ldm_stage_config(architectures.ldm_celebahq256_unet(),
                                   autoencoder=architectures.vq_f4())
  config.data = common.data_config(name="celeb_a_hq/256", image_size=256, batch_size=48,
                                   crop="center", random_flip=True)
  config.optimizer.learning_rate = 9.6e-5  # CompVis: base rate 2e-6 x batch 48.
  config.num_steps = 400_000
  config.sampling.update(steps=50, per_row=8, max_rows=4)
  if variant.tiny:
    common.tiny_data(config, "photos")
    common.shrink_ldm_stage(config)
  return config
