"""KL autoencoder, downsampling f=4, 3 latent channels (LDM's kl-f4), on photo patches.

  python train.py --config=configs/autoencoder_kl_f4.py --workdir=/tmp/ae_f4 \
      --config.loss.lpips_weights=lpips_vgg.npz
  python train.py --config=configs/autoencoder_kl_f4.py:tiny --workdir=/tmp/ae   # CPU, no LPIPS

Variants: `tiny` (small network, 32 px, no LPIPS, adversarial term from step 20).
"""

from configs import architectures
from configs import common


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False)
  architecture = architectures.kl_f4()
  config = common.autoencoder_stage_config(architecture)
  config.data = common.data_config(name="photo_patches/64", image_size=64, batch_size=16)
  if variant.tiny:
    common.shrink_autoencoder_stage(config)
  return config
