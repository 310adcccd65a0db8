"""VQ autoencoder, f=4, 3 latent channels, 8192 codes (LDM's vq-f4), on photo patches.

Loss settings from LDM's vq-f4 config: adversarial term from step 0, disc_weight 0.75.
  python train.py --config=configs/vq_f4.py --workdir=/tmp/vq_f4 \
      --config.loss.lpips_weights=lpips_vgg.npz
Variants: `tiny`.
"""

from configs import architectures
from configs import common


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False)
  config = common.autoencoder_stage_config(architectures.vq_f4(), disc_start=0,
                                           disc_weight=0.75)
  config.data = common.data_config(name="photo_patches/64", image_size=64, batch_size=16)
  if variant.tiny:
    common.shrink_autoencoder_stage(config)
    config.autoencoder.n_embed = 64
  return config
