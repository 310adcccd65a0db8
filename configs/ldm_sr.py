"""Super-resolution LDM, x4 from 64 to 256 px: the low-resolution image, at latent size,
concatenated to the vq-f4 latents.

  python train.py --config=configs/ldm_sr.py:folder=/data/photos --workdir=DIR \
      --config.first_stage.path=<vq-f4 autoencoder workdir>
Variants (`:a,b=value`):
  degradation=bsrgan_light|bsrgan|bicubic   how the low-resolution input is made (default
      bsrgan_light, as CompVis' LDM-BSR `bsr_sr`): the BSRGAN degradation in the input
      pipeline (ldm_jax/data/degradation.py), or a clean bicubic downsampling in the step;
  folder=DIR   an image folder; tiny   photo patches, a random tiny autoencoder (x2).
"""

from configs import architectures
from configs import common

DEGRADATIONS = ("bsrgan_light", "bsrgan", "bicubic")


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False, folder="", degradation="bsrgan_light")
  if variant.degradation not in DEGRADATIONS:
    raise ValueError(f"configs/ldm_sr.py:degradation={variant.degradation!r}: expected one "
                     f"of {DEGRADATIONS}.")
  unet = architectures.ldm_celebahq256_unet()
  # CompVis bsr_sr: 160 channels, mults (1, 2, 2, 4), attention at 16 and 8 px of 64.
  unet.update(in_channels=6, out_channels=3, model_channels=160, channel_mult=(1, 2, 2, 4),
              attention_resolutions=(4, 8), num_head_channels=32)
  config = common.ldm_stage_config(unet, autoencoder=architectures.vq_f4(), type="low_res")
  config.diffusion.linear_end = 0.0155  # bsr_sr's schedule.
  config.data = common.data_config(name="image_folder", image_size=256, batch_size=16,
                                   crop="random", random_flip=True)
  config.data.folder = variant.folder or None
  config.num_steps = 400_000
  config.sampling.update(steps=50, per_row=4)
  factor = 4
  if variant.tiny:
    common.tiny_data(config, "photos")
    config.network.in_channels = config.network.out_channels + 3  # Latents + the RGB low-res image.
    common.shrink_ldm_stage(config)
    factor = 2  # 16 px crops -> 8 px, the tiny autoencoder's latent size.
  if variant.degradation != "bicubic":
    config.data.update(degradation=variant.degradation, degradation_factor=factor)
    config.conditioning.key = "low_res"
  return config
