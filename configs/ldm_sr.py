"""Super-resolution LDM (LDM-SR): the low-resolution image, at latent size, concatenated to
the vq-f4 latents; x4 from 64 to 256 px.

  python train.py --config=configs/ldm_sr.py:folder=/data/photos --workdir=DIR \
      --config.first_stage.path=<vq-f4 autoencoder workdir>
The low-resolution input is a bicubic (antialiased) downsampling of each crop, made in the
training step. Variants: folder=DIR, tiny (photo patches, random tiny autoencoder).
"""

from configs import architectures
from configs import common


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False, folder="")
  unet = architectures.ldm_celebahq256_unet()
  # CompVis bsr_sr: 160 channels, mults (1, 2, 2, 4), attention at 16 and 8 px of 64.
  unet.update(in_channels=6, out_channels=3, model_channels=160, channel_mult=(1, 2, 2, 4),
              attention_resolutions=(4, 8), num_head_channels=32)
  config = common.ldm_stage_config(unet, autoencoder=architectures.vq_f4(), type="low_res")
  config.data = common.data_config(name="image_folder", image_size=256, batch_size=16,
                                   crop="random", random_flip=True)
  config.data.folder = variant.folder or None
  config.num_steps = 400_000
  config.sampling.update(steps=50, per_row=4)
  if variant.tiny:
    common.tiny_data(config, "photos")
    config.unet.in_channels = config.unet.out_channels + 3  # Latents + the RGB low-res image.
    common.shrink_ldm_stage(config)
  return config
