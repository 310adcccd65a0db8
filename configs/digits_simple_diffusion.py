"""simple diffusion on scikit-learn's digits: a class-conditional U-ViT in pixel space.

The pixel-space quickstart (`make quickstart-simple`, 2 CPU cores): no autoencoder, the
network denoises the 16 x 16 images themselves, trained in continuous time as
configs/simple_diffusion.py trains ImageNet:
  python train.py --config=configs/digits_simple_diffusion.py --workdir=out/quickstart/simple
  python -m ldm_jax.eval.digits_report --workdir=out/quickstart/simple \
      --out=out/quickstart/simple_samples.png
Variants (`:a,b=value`):
  arch=uvit|unet   the U-ViT (default) or the UNet in simple diffusion's form;
  tiny             a tiny network, a few steps (tests).
"""

import ml_collections

from configs import common
from configs import digits_ldm
from configs import simple_diffusion

ARCHS = ("uvit", "unet")


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False, arch="uvit")
  if variant.arch not in ARCHS:
    raise ValueError(f"configs/digits_simple_diffusion.py:arch={variant.arch!r}: expected one "
                     f"of {ARCHS}.")
  execution = dict(dtype="float32", param_dtype="float32", remat="none", attention_impl="auto")
  if variant.arch == "uvit":
    # 16x16 (8x8 digits upscaled) -> a 2x2 patching stem -> two ResBlocks at 64 channels
    # at 8x8 -> 4x4 = 16 tokens through 4 transformer blocks 128 wide. (A 1x1 stem, ResBlocks
    # at 16x16, trains 3.5x slower on 2 CPU cores.)
    network = dict(type="uvit", stem="patch", patch_size=2, channels=(64,), num_res_blocks=2,
                   attention_levels=(), transformer_width=128, transformer_depth=4,
                   head_dim=32, mlp_ratio=4, embedding_width=256, dropout=0.1,
                   res_dropout=0.0, context_dim=None)
  else:
    network = dict(type="unet", model_channels=64, channel_mult=(1, 2), num_res_blocks=2,
                   attention_resolutions=(2,), num_heads=-1, num_head_channels=32,
                   use_spatial_transformer=False, transformer_depth=1, context_dim=None,
                   linear_projection=False, scale_shift=True, dropout=0.1,
                   dropout_resolutions=(2,))
  network.update(in_channels=1, out_channels=1, num_classes=11, logsnr_input=True,
                 **execution)
  config = common.ldm_stage_config(ml_collections.ConfigDict(network), type="class",
                                   num_classes=10, dropout=0.1, class_input="embedding")
  config.first_stage.source = "pixels"
  config.data = digits_ldm.data()
  config.data.caption_key = None
  # The shifted cosine at 16 px (+2 log 4 on the logSNR), v-prediction with the eps-space
  # loss, and the multiscale loss over 8x8 and 16x16.
  config.diffusion = simple_diffusion.diffusion(64, multiscale_base=8)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=100)
  config.ema.decay = 0.999
  config.num_steps = 2_000
  config.log_every = 100
  config.eval_every = 1_000
  config.checkpoint_every = 500
  # Guidance measured on the quickstart run (fresh clone, 2,000 steps, DDIM 50, 1,000
  # samples; floor 10.25): 1.0 gives 87.0% accuracy and 1.10x the floor's Frechet
  # distance; 1.5: 97.7%, 1.51x; 2.0: 99.2%, 2.56x.
  config.sampling.update(sampler="ddim", steps=50, guidance_scale=1.5, per_row=10,
                         max_rows=10)
  if variant.tiny:
    common.shrink_ldm_stage(config, image_size=16)
  return config
