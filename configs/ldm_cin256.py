"""Class-conditional LDM on ImageNet 256 (cin256-v2: a class embedder's token as context).

  python train.py --config=configs/ldm_cin256.py --workdir=DIR \
      --config.first_stage.path=<autoencoder workdir>
Variants (`:a,b=value`):
  f=1|2|4|8|16|32   the paper's LDM-f sweep: the first stage's downsampling factor (default 4,
                    vq-f4; 1 is pixel space; others the CompVis kl-f autoencoders' layouts);
  cfg=P             condition dropout for classifier-free guidance (default 0.1; 0 as the
                    released model, which has no null class);
  tiny              a random tiny autoencoder on the digits, for tests.
TFDS's `imagenet2012` needs a manual download.
"""

from configs import architectures
from configs import common

# f -> (autoencoder block, latent channels); the kl layouts follow CompVis' first-stage
# configs (kl-f8: 4 channels, kl-f16: 16, kl-f32: 64); kl-f2 is ours (no released model).
SWEEP = {
    1: (None, 3),
    2: (lambda: architectures.kl_f4(ch_mult=(1, 2)), 3),
    4: (architectures.vq_f4, 3),
    8: (architectures.sd_kl_f8, 4),
    16: (lambda: architectures.kl_f4(ch_mult=(1, 1, 2, 2, 4), z_channels=16, embed_dim=16,
                                      attn_resolutions=(16,)), 16),
    32: (lambda: architectures.kl_f4(ch_mult=(1, 1, 2, 2, 4, 4), z_channels=64,
                                      embed_dim=64, attn_resolutions=(16, 8)), 64),
}


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False, f=4, cfg=0.1)
  if variant.f not in SWEEP:
    raise ValueError(f"configs/ldm_cin256.py:f={variant.f}: expected one of {sorted(SWEEP)}.")
  make_ae, channels = SWEEP[variant.f]
  unet = architectures.ldm_cin256_v2_unet()
  unet.update(in_channels=channels, out_channels=channels)
  embedder = architectures.ldm_cin256_v2_class_embedder()
  embedder.add_null_class = variant.cfg > 0
  config = common.ldm_stage_config(unet, autoencoder=make_ae() if make_ae else None,
                                   conditioner=embedder, type="class", num_classes=1000,
                                   dropout=variant.cfg, class_input="context")
  if variant.f == 1:
    config.first_stage.source = "pixels"
  config.data = common.data_config(name="imagenet2012", image_size=256, batch_size=64,
                                   crop="center", random_flip=True, label_key="label",
                                   eval_split="validation")
  config.num_steps = 400_000
  config.sampling.update(steps=50, per_row=8, max_rows=8, guidance_scale=3.0 if
                         variant.cfg else 1.0)
  if variant.tiny:
    common.tiny_data(config, "digits")
    config.conditioning.num_classes = config.conditioner.num_classes = 10
    common.shrink_ldm_stage(config)
  return config
