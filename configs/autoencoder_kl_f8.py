"""KL autoencoder, f=8, 4 latent channels (LDM's kl-f8, the Stable Diffusion VAE layout).

  python train.py --config=configs/autoencoder_kl_f8.py --workdir=/tmp/ae_f8 \
      --config.loss.lpips_weights=lpips_vgg.npz
Variants: `tiny`.
"""

from configs import architectures
from configs import common


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False)
  config = common.autoencoder_stage_config(architectures.sd_kl_f8())
  config.data = common.data_config(name="photo_patches/128", image_size=128, batch_size=8)
  if variant.tiny:
    common.shrink_autoencoder_stage(config)
  return config
