"""A small KL autoencoder (f=2: 16x16 digits -> 8x8x3 latents) for the digits LDM; trains
in minutes on 2 CPU cores (the digits are 8x8, so 16 px loses nothing).

  python train.py --config=configs/digits_autoencoder.py --workdir=out/quickstart/autoencoder
The LDM stage (configs/digits_ldm.py) reads its latents' scale_factor from the workdir.
Without LPIPS weights the perceptual term is off (set loss.lpips_weights and
loss.perceptual_weight=1.0 to use it). Variants: `tiny`.
"""

from configs import architectures
from configs import common
from configs import digits_ldm


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False)
  architecture = architectures.kl_f4(ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                     in_channels=1, out_ch=1, resolution=16)
  config = common.autoencoder_stage_config(architecture, perceptual_weight=0.0,
                                           disc_start=601, disc_ndf=32, disc_layers=2)
  config.data = digits_ldm.data()
  config.data.label_key = None
  config.data.caption_key = None
  config.data.channels = 1
  config.data.batch_size = 32  # Half the LDM's: the quickstart's time goes to the LDM.
  config.optimizer.learning_rate = config.disc_optimizer.learning_rate = 3e-4
  config.num_steps = 1_000
  config.log_every = 100
  config.eval_every = config.checkpoint_every = 500
  if variant.tiny:
    common.shrink_autoencoder_stage(config)
    config.autoencoder.in_channels = config.autoencoder.out_ch = 1
    config.data.image_size = 16
  return config
