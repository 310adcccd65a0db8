"""Latent diffusion on scikit-learn's handwritten digits: class- or caption-conditional.

Small enough for 2 CPU cores (the quickstart). First train the autoencoder, then the LDM:
  python train.py --config=configs/digits_autoencoder.py --workdir=out/quickstart/autoencoder
  python train.py --config=configs/digits_ldm.py --workdir=out/quickstart/ldm
Variants (`:a,b=value`):
  cond=class|caption|none   what the UNet is conditioned on (default class);
  class_input=embedding|context   class through a label embedding added to the time embedding
                            (default) or a class token for cross-attention (LDM cin256);
  ae=DIR                    the autoencoder run's workdir (default out/quickstart/autoencoder);
  schedule=NAME             the noise schedule (default sqrt_linear, CompVis'; e.g.
                            logsnr_shifted_cosine: simple diffusion's, continuous time,
                            trained with prediction='v');
  tiny                      a random tiny autoencoder and UNet, a few steps (tests).
"""

import ml_collections

from configs import common

CONDITIONS = ("class", "caption", "none")


def data():
  return common.data_config(
      name="digits",
      image_size=16,  # 8x8 digits upscaled; the autoencoder (f=2) gives 8x8x3 latents.
      small_images="upscale",  # The digits are 8x8.
      crop="center",  # Digits are centred and square: random crops would cut strokes.
      random_flip=False,  # A flipped 3 is not a 3.
      label_key="label",
      caption_key="caption",
      channels=1,
      batch_size=64,
      shuffle_buffer=2_000,  # Whole train split (1,437 images).
  )


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False, cond="class", class_input="embedding",
                             ae="out/quickstart/autoencoder", schedule="sqrt_linear")
  if variant.cond not in CONDITIONS:
    raise ValueError(f"configs/digits_ldm.py:cond={variant.cond!r}: expected one of "
                     f"{CONDITIONS}.")
  unet = ml_collections.ConfigDict(dict(
      type="unet", in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2),
      num_res_blocks=2, attention_resolutions=(2,), num_heads=4, num_head_channels=-1,
      use_spatial_transformer=True, transformer_depth=1, context_dim=None,
      linear_projection=False, num_classes=None, scale_shift=False, dropout=0.0,
      dtype="float32", param_dtype="float32", remat="none", attention_impl="auto"))
  conditioner, conditioning = None, dict(type="none")
  if variant.cond == "class":
    conditioning = dict(type="class", num_classes=10, dropout=0.1,
                        class_input=variant.class_input)
    if variant.class_input == "context":
      conditioner = ml_collections.ConfigDict(dict(type="class", num_classes=10,
                                                   embed_dim=64, add_null_class=True))
      unet.context_dim = 64
    else:
      unet.num_classes = 11  # Ten digits and the null class.
  elif variant.cond == "caption":
    conditioning = dict(type="text", dropout=0.1)  # Byte tokenizer: nothing to download.
    conditioner = ml_collections.ConfigDict(dict(
        type="text", vocab_size=259, max_length=32, width=64, depth=2, heads=4,
        head_dim=None, mlp_ratio=4, dropout=0.0, attention_impl="auto",
        dtype="float32", param_dtype="float32"))
    unet.context_dim = 64
  config = common.ldm_stage_config(unet, conditioner=conditioner, **conditioning)
  config.data = data()
  if variant.cond == "none":
    config.data.label_key = None
  if variant.cond != "caption":
    config.data.caption_key = None
  config.first_stage.path = variant.ae
  # Measured on the quickstart (2 CPU cores, 1,500 steps): min-SNR weighting and lr 1e-3.
  config.diffusion.weighting = "min_snr"
  config.diffusion.schedule = variant.schedule
  if variant.schedule.startswith("logsnr_"):
    config.diffusion.prediction = "v"
  config.optimizer.update(learning_rate=1e-3, warmup_steps=100)
  config.ema.decay = 0.999
  config.num_steps = 1_500
  config.log_every = 100
  config.eval_every = 750  # Two sample grids; each costs ~25 s on 2 cores.
  config.checkpoint_every = 500
  config.sampling.update(guidance_scale=2.0, per_row=10, max_rows=10)
  if variant.cond == "caption":
    config.sampling.prompts = tuple(f"a handwritten digit {w}" for w in (
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))
  if variant.tiny:
    common.shrink_ldm_stage(config, image_size=16)
    if variant.cond == "caption":
      config.conditioner.max_length = 32
  return config
