"""simple diffusion (Hoogeboom, Heek & Salimans 2023): class-conditional ImageNet in pixel space.

  python train.py --config=configs/simple_diffusion.py:res=128 --workdir=DIR
Variants (`:a,b=value`):
  res=64|128|256|512   image side (default 128);
  arch=uvit|unet       the U-ViT (models/uvit.py, default) or our UNet in its simple diffusion
                       form (logSNR input, dropout at <= 16x16 only);
  cfg=P                condition dropout for classifier-free guidance (default 0.1);
  tiny                 a tiny network on the digits at 16 px (tests).
Data: TFDS `imagenet2012` (manual download) for res >= 128; `imagenet_resized/64x64` (box-
downsampled ImageNet with labels; `downsampled_imagenet` has none) for res=64.

What follows a source, and what is ours:
* Diffusion (paper Sec. 2-3): variance preserving, logSNR(t) = -2 log tan(pi t / 2) truncated
  to [-15, 15], shifted by 2 log(64 / res) for res <= 256; at 512 the interpolated schedule
  from the shift for 32 (t = 1) to that for 256 (t = 0) (diffusion/schedules.py says which
  source fixes the direction); t ~ U(0, 1); v-prediction trained with the eps-space MSE; the
  network sees the logSNR. (The Multistep Consistency Models appendix trains its 64 and 128
  networks on the interpolated schedule from 32 to res instead: at 128 add
  --config.diffusion.schedule=logsnr_interpolated_cosine
  --config.diffusion.interpolate_sizes='(32,128)'.) Multiscale loss: 2x2 pooling once at
  128 (base 64, as that appendix, "following simple diffusion"), from 32 x 32 at 256 and
  512 (the paper's lowest scale); none at 64.
* U-ViT at 64 and 128 (Multistep Consistency Models, Appendix A): 3 ResBlocks at 256
  channels at 64x64, then "3 transformer blocks at 512" (read here as 3 ResBlocks with
  self-attention at 32x32), then 16 transformer blocks 1024 wide at 16x16 (MLP ratio 4,
  dropout 0.2 at 64, 0.1 at 128); 128 adds 3 ResBlocks at 128 channels at full resolution.
  Average pooling down, nearest-neighbour up. The source reports 394M / 397M parameters;
  ours has 333.7M / 337.4M, of which 67.2M are the per-block adaptive-LayerNorm modulation
  (the source does not say how its transformer blocks are conditioned; heads of 64
  channels are also our choice), so the rest of the source's network is larger than ours.
* U-ViT at 256 and 512: the 128 network behind a 2x2 patching stem (256) or two levels of
  the 5/3 wavelet (512); the paper's 256/512 widths are not pinned here (its appendix
  tables were not reachable): these are the 128 network's size, not the paper's sizes.
* UNet (arch=unet): the paper's 128 U-Net table was not reachable, so this is ADM's
  ImageNet UNet of the same resolution (base channels, multipliers, ResBlocks, attention at
  32/16/8 px with 64-channel heads, scale-shift norms) in simple diffusion's form: logSNR
  input, dropout 0.1 only at <= 16 px.
* Training (paper: batch 2048, 500k steps): Adam at 1e-4 with 10k warmup steps, gradient
  norm clipped at 1, EMA 0.9999 (not pinned to the paper's numbers).
Anchors (paper, FID-50k on ImageNet): U-ViT 256: 2.77 (2.44 with guidance); 512: 4.53
(3.02); U-Net 128: 2.88.

Parameter counts (tests/simple_diffusion_config_test.py checks them):
  uvit: res 64: 333.7M, 128: 337.4M, 256: 337.4M, 512: 337.5M;
  unet: res 64: 277.2M, 128: 386.0M, 256: 502.2M, 512: 483.3M.
"""

import ml_collections

from configs import architectures
from configs import common

RESOLUTIONS = (64, 128, 256, 512)
ARCHS = ("uvit", "unet")


def uvit(res: int) -> ml_collections.ConfigDict:
  body = dict(channels=(256, 512), attention_levels=(1,), dropout=0.2)
  if res >= 128:
    body = dict(channels=(128, 256, 512), attention_levels=(2,), dropout=0.1)
  stem = dict(stem="patch", patch_size=1)
  if res == 256:
    stem = dict(stem="patch", patch_size=2)
  elif res == 512:
    stem = dict(stem="wavelet", patch_size=4)
  return ml_collections.ConfigDict(dict(
      type="uvit", in_channels=3, out_channels=3, **stem, **body, num_res_blocks=3,
      transformer_width=1024, transformer_depth=16, head_dim=64, mlp_ratio=4,
      embedding_width=1024, res_dropout=0.0, num_classes=1001, context_dim=None,
      logsnr_input=True, **architectures.EXECUTION))


# ADM's class-conditional ImageNet UNets (openai/guided-diffusion: the README's model flags,
# script_util.py's channel_mult): res -> (base channels, multipliers, ResBlocks per level);
# 512's (0.5, 1, 1, 2, 2, 4, 4) x 256 written as x 128. Not ADM's: 64-channel heads at 128
# (ADM: 4 heads), convolutional resampling (ADM: resblock_updown).
ADM_UNETS = {64: (192, (1, 2, 3, 4), 3), 128: (256, (1, 1, 2, 3, 4), 2),
             256: (256, (1, 1, 2, 2, 4, 4), 2), 512: (128, (1, 2, 2, 4, 4, 8, 8), 2)}


def unet(res: int) -> ml_collections.ConfigDict:
  base, mult, blocks = ADM_UNETS[res]
  attend = tuple(res // side for side in (32, 16, 8))  # As ADM: at 32, 16 and 8 px.
  low = tuple(f for f in attend if res // f <= 16)  # simple diffusion: dropout at <= 16 px.
  return ml_collections.ConfigDict(dict(
      type="unet", in_channels=3, out_channels=3, model_channels=base, channel_mult=mult,
      num_res_blocks=blocks, attention_resolutions=attend, num_heads=-1,
      num_head_channels=64, use_spatial_transformer=False, transformer_depth=1,
      context_dim=None, linear_projection=False, num_classes=1001, scale_shift=True,
      dropout=0.1, dropout_resolutions=low, logsnr_input=True, **architectures.EXECUTION))


def diffusion(res: int, **overrides) -> ml_collections.ConfigDict:
  block = common.diffusion_config(
      schedule="logsnr_interpolated_cosine" if res == 512 else "logsnr_shifted_cosine",
      shift_base=64, interpolate_sizes=(32, 256), logsnr_min=-15.0, logsnr_max=15.0,
      time_input="logsnr", prediction="v", weighting="eps",
      multiscale_base={64: None, 128: 64, 256: 32, 512: 32}[res])
  block.update(overrides)
  return block


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False, res=128, arch="uvit", cfg=0.1)
  if variant.res not in RESOLUTIONS:
    raise ValueError(f"configs/simple_diffusion.py:res={variant.res}: expected one of "
                     f"{RESOLUTIONS}.")
  if variant.arch not in ARCHS:
    raise ValueError(f"configs/simple_diffusion.py:arch={variant.arch!r}: expected one of "
                     f"{ARCHS}.")
  network = uvit(variant.res) if variant.arch == "uvit" else unet(variant.res)
  config = common.ldm_stage_config(network, type="class", num_classes=1000,
                                   dropout=variant.cfg, class_input="embedding")
  config.first_stage.source = "pixels"
  config.diffusion = diffusion(variant.res)
  if variant.res == 64:
    config.data = common.data_config(name="imagenet_resized/64x64", eval_split="validation")
  else:
    config.data = common.data_config(name="imagenet2012", eval_split="validation",
                                     small_images="upscale")
  config.data.update(image_size=variant.res, batch_size=2048, crop="center",
                     random_flip=True, label_key="label")
  config.optimizer = common.optimizer_config(name="adam", learning_rate=1e-4,
                                             warmup_steps=10_000, grad_clip_norm=1.0)
  config.ema.decay = 0.9999
  config.num_steps = 500_000
  config.sampling.update(sampler="ddpm", steps=256, per_row=8, max_rows=8,
                         guidance_scale=1.0)
  if variant.tiny:
    common.tiny_data(config, "digits")
    config.conditioning.num_classes = 10
    config.network.num_classes = 11
    common.shrink_ldm_stage(config)
  return config
