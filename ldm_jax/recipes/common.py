"""Pieces every experiment config shares, and the parsing of `--config=x.py:variant` args.

Each experiment file defines `get_config(arg=None)`; `arg` is what follows the colon:
`tiny`, `tiny,f=8`, `folder=/data/pets,size=128`. Load one with
`--config=configs/x.py:tiny` and override any field with `--config.data.batch_size=64`.
"""

import ml_collections
from ml_collections import config_dict


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'a,b=2' into {a: True, b: 2}, typed like `defaults`; unknown keys are errors."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"Config variant {key!r} is unknown; this config takes "
                       f"{sorted(defaults)} (as ':a,b=value').")
    default = defaults[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ValueError(f"Config variant {key!r} needs a value, e.g. {key}={default!r}.")
      result[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"Config variant {key}={value!r}: expected true or false.")
      result[key] = value.lower() in ("true", "1")
    else:
      try:
        result[key] = type(default)(value) if default is not None else value
      except ValueError as e:
        raise ValueError(f"Config variant {key}={value!r}: expected a "
                         f"{type(default).__name__}.") from e
  return result


def data_config(**overrides) -> ml_collections.ConfigDict:
  """The `data` block: source, preprocessing and batching. Every field is documented here."""
  config = ml_collections.ConfigDict()
  # Source: 'digits', 'photo_patches[/32|/64|/128]', 'image_folder' (+ folder), any
  # registered TFDS dataset prepared in data_dir, or a prepared TFDS dataset's directory.
  config.name = "digits"
  config.data_dir = config_dict.placeholder(str)  # None: TFDS's default data dir.
  config.folder = config_dict.placeholder(str)  # For name='image_folder'.
  config.train_split = "train"
  config.eval_split = "test"
  # Features carried into the batch; None leaves a field out.
  config.image_key = "image"
  config.label_key = config_dict.placeholder(str)
  config.caption_key = config_dict.placeholder(str)
  config.cond_image_keys = ()  # Paired images cropped/flipped exactly like `image`.
  config.label_map_keys = ()  # Paired integer maps (segmentations): same geometry, nearest.
  # A latent cache (python -m ldm_jax.ldm.latent_cache): name = its directory, and
  # latent_key='moments' reads stored encodings instead of images.
  config.latent_key = config_dict.placeholder(str)
  # Preprocessing: shorter side resized to image_size, then a square crop.
  config.image_size = 64
  config.crop = "random"  # 'random' or 'center' (evaluation always crops the center).
  config.random_flip = True
  config.resize_method = "bicubic"
  config.small_images = "error"  # Shorter side < image_size: 'error', 'upscale' or 'skip'.
  config.channels = config_dict.placeholder(int)  # None keeps the source's; 1 or 3.
  # LDM-BSR: `low_res` = the crop degraded by 'bsrgan' / 'bsrgan_light' to image_size /
  # degradation_factor (ldm_jax/data/degradation.py); None: no such field.
  config.degradation = config_dict.placeholder(str)
  config.degradation_factor = 4
  # Batching: the *global* batch, split over processes and devices.
  config.batch_size = 64
  config.shuffle_buffer = 10_000
  config.update(overrides)
  return config


def mesh_config() -> ml_collections.ConfigDict:
  """Device mesh (data x fsdp); -1 takes all remaining devices."""
  return ml_collections.ConfigDict({"data": -1, "fsdp": 1})


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # The one root seed: data order, initialisation and sampling derive from it.
  config.mesh = mesh_config()
  config.data = data_config()
  return config


def training_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds the loop's fields (steps, cadences, checkpoints, non-finite policy) to `config`."""
  config.num_steps = 100_000
  config.log_every = 50  # Train metrics written every this many steps.
  config.eval_every = 5_000  # Eval split (and image grids) every this many steps.
  config.eval_batches = config_dict.placeholder(int)  # None: the whole eval split.
  config.checkpoint_every = 5_000
  config.checkpoint = ml_collections.ConfigDict(dict(
      max_to_keep=3,  # Newest kept; None keeps all.
      keep_period=config_dict.placeholder(int),  # Also keep every step divisible by this.
      async_save=True))
  config.nonfinite = "skip"  # Non-finite loss/grads: 'skip' the update or 'stop' the run.
  # Steps the host may dispatch (reading and transferring their batches) ahead of the one
  # the devices run; 0 waits for every step. Changes nothing computed.
  config.steps_ahead = 2
  # Sample-quality evaluators by name (ldm_jax/training/evals.py), e.g. for an LDM run:
  #   config.evals.fid = ml_collections.ConfigDict(dict(type="fid", every=5000,
  #       num_samples=10_000, weights="inception_fid.npz"))
  config.evals = ml_collections.ConfigDict()
  return config


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
  """See ldm_jax/training/optim.py for every field."""
  config = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
      schedule="constant", warmup_steps=0, decay_steps=config_dict.placeholder(int),
      end_learning_rate=0.0, grad_clip_norm=config_dict.placeholder(float),
      accumulate_steps=1, frozen=()))
  config.update(overrides)
  return config


def autoencoder_loss_config(**overrides) -> ml_collections.ConfigDict:
  """CompVis LPIPSWithDiscriminator / taming VQLPIPSWithDiscriminator settings."""
  config = ml_collections.ConfigDict(dict(
      rec_loss="l1",  # 'l1' or 'l2' pixel term.
      perceptual_weight=1.0,  # LPIPS weight; > 0 needs lpips_weights (never random VGG).
      lpips_weights=config_dict.placeholder(str),
      logvar_init=0.0,
      learn_logvar=False,  # CompVis keeps logvar out of the optimiser; True trains it.
      kl_weight=1e-6,  # KL models.
      codebook_weight=1.0,  # VQ models.
      disc_start=50_001,  # Step from which the adversarial terms are on.
      disc_factor=1.0,
      disc_weight=0.5,  # Multiplies the adaptive weight.
      disc_loss="hinge",  # 'hinge' or 'vanilla'.
      disc_ndf=64,
      disc_layers=3))
  config.update(overrides)
  return config


def autoencoder_stage_config(architecture: ml_collections.ConfigDict,
                             **loss_overrides) -> ml_collections.ConfigDict:
  """A whole autoencoder-stage config: base + training + architecture + loss + optimisers.

  Learning rates are CompVis' base rate 4.5e-6 times the global batch size, as its main.py
  scales them; Adam with betas (0.5, 0.9) for both networks.
  """
  config = training_config(base_config())
  config.stage = "autoencoder"
  config.autoencoder = architecture
  config.loss = autoencoder_loss_config(**loss_overrides)
  config.optimizer = optimizer_config(learning_rate=4.5e-6 * config.data.batch_size,
                                      b1=0.5, b2=0.9)
  config.disc_optimizer = optimizer_config(learning_rate=4.5e-6 * config.data.batch_size,
                                           b1=0.5, b2=0.9)
  config.scale_factor_batches = config_dict.placeholder(int)  # None: the whole train split.
  return config


def shrink_autoencoder_stage(config: ml_collections.ConfigDict) -> None:
  """The `tiny` variant: the narrowest network on 32 px crops, no LPIPS, the discriminator
  on from step 20, short cadences; for tests and CPU smoke runs."""
  levels = len(config.autoencoder.ch_mult)  # Kept: the downsampling factor does not change.
  config.autoencoder.update(ch=32, ch_mult=(1,) * (levels - 1) + (2,), num_res_blocks=1,
                            resolution=32, attn_resolutions=())  # 32: GroupNorm's groups.
  config.data.image_size = 32
  config.data.batch_size = 8
  config.data.shuffle_buffer = 64
  config.loss.update(perceptual_weight=0.0, disc_start=20, disc_ndf=8, disc_layers=2)
  config.optimizer.learning_rate = config.disc_optimizer.learning_rate = 1e-3
  config.num_steps = 60
  config.log_every = 10
  config.eval_every = config.checkpoint_every = 30
  config.eval_batches = 2
  config.scale_factor_batches = 2


def diffusion_config(**overrides) -> ml_collections.ConfigDict:
  """The `diffusion` block: noise schedule, prediction target and loss (CompVis defaults)."""
  config = ml_collections.ConfigDict(dict(
      # Discrete: 'linear' (DDPM), 'sqrt_linear' (CompVis/SD), 'stable_diffusion', 'cosine';
      # continuous time: 'logsnr_cosine', 'logsnr_shifted_cosine' and
      # 'logsnr_interpolated_cosine' (simple diffusion). See diffusion/schedule_config.py.
      schedule="sqrt_linear",
      num_timesteps=1000,  # Discrete steps (for continuous schedules: the samplers' grid).
      linear_start=0.0015, linear_end=0.0195,
      zero_terminal_snr=False,  # Lin et al. rescale (use with prediction='v').
      logsnr_min=-15.0, logsnr_max=15.0,  # Continuous: the cosine logSNR's truncation.
      shift_base=64,  # Shifted cosine: logSNR + 2 log(shift_base / size).
      shift_size=config_dict.placeholder(int),  # None: the latent (or pixel) side.
      interpolate_sizes=(32, 256),  # Interpolated cosine: the shifts at t = 1 and t = 0.
      time_input="t",  # Continuous: the network sees 't' (t * num_timesteps) or 'logsnr'.
      prediction="eps",  # 'eps', 'x0' or 'v'.
      weighting="uniform",  # 'uniform', 'min_snr' or 'eps' (see diffusion/losses.py).
      min_snr_gamma=5.0,
      # simple diffusion's multiscale loss: sum over s = base, 2 base, .., side of the MSE
      # of the error average-pooled to s x s, weighted 1 / s; None: the plain MSE.
      multiscale_base=config_dict.placeholder(int),
      learn_logvar=False, logvar_init=0.0,  # CompVis' per-timestep log-variance.
      simple_weight=1.0, elbo_weight=0.0))  # CompVis l_simple_weight / original_elbo_weight.
  config.update(overrides)
  return config


def conditioning_config(**overrides) -> ml_collections.ConfigDict:
  """The `conditioning` block: see ldm_jax/ldm/modes/ for each type."""
  config = ml_collections.ConfigDict(dict(
      type="none",  # none, class, text, low_res, inpainting, semantic, image.
      dropout=0.0,  # Classifier-free guidance: P(condition -> null) per example.
      class_input="context",  # class: 'context' (cross-attention) or 'embedding' (label).
      num_classes=config_dict.placeholder(int),
      key=config_dict.placeholder(str),  # semantic / image: the batch field of the condition.
      num_semantic_classes=config_dict.placeholder(int),
      encode_condition=True,  # image: through the frozen autoencoder (else resized pixels).
      condition_channels=config_dict.placeholder(int),  # image, encode_condition=False.
      # text / frozen_text: None = bytes, or tokenizer files (a folder, tokenizer.json,
      # vocab.txt, or CLIP's vocab.json + merges.txt).
      tokenizer=config_dict.placeholder(str),
      # text / frozen_text: padding, 'eos' (SD 1.x), '0' (SD 2.x) or another id; None: what
      # the tokenizer files say.
      pad=config_dict.placeholder(str),
      # frozen_text: a converted directory holding the encoder (conditioner/), or 'random'.
      text_encoder=config_dict.placeholder(str)))
  config.update(overrides)
  return config


def ldm_stage_config(network: ml_collections.ConfigDict, *, autoencoder=None,
                     conditioner=None, **conditioning) -> ml_collections.ConfigDict:
  """A whole LDM-stage config: base + training + first stage + the denoiser network
  (`network`, a block of models/networks.py: type 'unet') + conditioning +
  diffusion + EMA + sample grids + optimiser (AdamW, CompVis' weight decay 0.01)."""
  config = training_config(base_config())
  config.stage = "ldm"
  config.network = network
  config.autoencoder = autoencoder  # None: taken from the first stage's checkpoint.
  config.conditioner = conditioner
  config.first_stage = ml_collections.ConfigDict(dict(
      source="workdir",  # 'workdir', 'export', 'random' (smoke tests) or 'pixels'.
      path=config_dict.placeholder(str),
      scale_factor=config_dict.placeholder(float)))  # None: from the workdir's results.
  config.conditioning = conditioning_config(**conditioning)
  # A converted directory (python -m ldm_jax.convert) whose network/ weights start the run
  # (fine-tuning); None: a fresh initialisation.
  config.init_from = config_dict.placeholder(str)
  config.diffusion = diffusion_config()
  config.ema = ml_collections.ConfigDict(dict(decay=0.9999, warmup=True))  # decay 0: none.
  config.sampling = ml_collections.ConfigDict(dict(
      sampler="ddim", steps=20, eta=0.0, guidance_scale=1.0,
      # diffusers' scheduler settings (Stable Diffusion: 1 and False): added to the 'leading'
      # timesteps; alpha^2 past the last step is 1 (True) or alphas_cumprod[0] (False).
      steps_offset=0, set_alpha_to_one=True,
      per_row=8, max_rows=10,  # Columns; rows for class grids (or unconditional ones).
      prompts=()))  # text: one grid row per prompt.
  config.optimizer = optimizer_config(name="adamw", learning_rate=1e-4, weight_decay=0.01)
  return config


def shrink_ldm_stage(config: ml_collections.ConfigDict, *, image_size: int = 16) -> None:
  """The `tiny` variant: a random two-level autoencoder (f=2), a one-level 32-channel UNet
  (self- and cross-attention, no resampling: a two-level one takes half as long again to
  compile, which is most of a tiny run on a CPU) or U-ViT (one level, two transformer
  blocks), 4 steps; for tests and CPU smoke runs. Keeps the conditioning, schedule and
  prediction (a multiscale loss from half the image side)."""
  ae_channels = config.data.get("channels") or 3
  if config.first_stage.source != "pixels":
    config.autoencoder = ml_collections.ConfigDict(dict(
        type="kl", ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
        resolution=image_size, in_channels=ae_channels, out_ch=ae_channels, z_channels=4,
        embed_dim=4, dropout=0.0, dtype="float32", param_dtype="float32", remat="none",
        attention_impl="auto"))
    config.first_stage.update(source="random", path=None)
  latent = 4 if config.first_stage.source != "pixels" else ae_channels
  concat = config.network.in_channels - config.network.out_channels
  if config.conditioning.type == "inpainting":
    concat = latent + 1
  elif config.conditioning.type == "image" and config.conditioning.encode_condition:
    concat = latent
  if config.network.type == "uvit":  # One 32-channel level, two 32-wide blocks.
    config.network.update(in_channels=latent + concat, out_channels=latent, channels=(32,),
                          num_res_blocks=1, attention_levels=(), transformer_width=32,
                          transformer_depth=2, head_dim=16, embedding_width=None,
                          patch_size=min(config.network.get("patch_size", 1), 4))
  else:
    config.network.update(in_channels=latent + concat, out_channels=latent,
                          model_channels=32, channel_mult=(1,), num_res_blocks=1,
                          attention_resolutions=(1,), num_heads=2, num_head_channels=-1,
                          transformer_depth=1)
  if config.diffusion.get("multiscale_base"):
    config.diffusion.multiscale_base = image_size // 2
  if config.conditioner is not None:
    if config.conditioner.type == "text":
      config.conditioner.update(width=32, depth=1, heads=2, head_dim=None, max_length=16)
    elif config.conditioner.type == "clip":
      config.conditioner.update(width=32, depth=2, heads=2, mlp_width=64, max_length=16,
                                output_layer=-1)
    else:
      config.conditioner.embed_dim = 32
    config.network.context_dim = 32
  config.data.image_size = image_size
  config.data.batch_size = 8
  config.data.shuffle_buffer = 64
  config.num_steps = 4
  config.log_every = 2
  config.eval_every = config.checkpoint_every = 4
  config.eval_batches = 1
  config.sampling.update(steps=2, per_row=2, max_rows=2)


def tiny_data(config: ml_collections.ConfigDict, source: str) -> None:
  """Points a `tiny` LDM variant at data that ship offline: 'digits' (labels, captions, gray)
  or 'photos' (scikit-image photo patches, RGB)."""
  if source == "digits":
    config.data = data_config(name="digits", small_images="upscale", crop="center",
                              random_flip=False, label_key="label", caption_key="caption",
                              channels=1)
  else:
    config.data = data_config(name="photo_patches/32")
  config.data.update(image_size=16, batch_size=8, shuffle_buffer=64)
