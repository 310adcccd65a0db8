"""The measured JAX programs, on synthetic data (nothing here imports TensorFlow):

  unet_step         the denoiser network's (UNet's, U-ViT's) training step on latents (or
                    pixels) and context given (as with cached latents and frozen text
                    embeddings): noise at the schedule's times, forward + backward, AdamW,
                    EMA; for a UNet the same work as `torch_steps.unet_step`;
  ldm_step          the library's own LDM training step (`LdmStage.train_step`): images through
                    the frozen autoencoder, conditioning, the UNet, AdamW, EMA; with
                    `data.latent_key` (MLPerf's SD recipe) from precomputed encoder moments
                    and caption contexts, so nothing but the UNet's update;
  sampling          DDIM with `sampling_steps` steps from noise to decoded images;
  vae_step          the autoencoder's reconstruction step (L1 + KL, forward + backward,
                    AdamW), the same work as `torch_steps.vae_step`;
  autoencoder_step  the library's autoencoder training step (`AutoencoderStage.train_step`,
                    with its PatchGAN discriminator);
  vae_encode        images to latents (the posterior's mean), inference;
  vae_decode        latents to images, inference.

Each builder returns a `Program`: a jitted function with explicit shardings, its first
arguments, and whether it threads a state (donated) through the calls.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ldm_jax.diffusion import process
from ldm_jax.diffusion import schedule_config
from ldm_jax.ldm import first_stage as first_stage_lib
from ldm_jax.ldm import model as model_lib
from ldm_jax.models import factory
from ldm_jax.models import networks
from ldm_jax.models.distributions import DiagonalGaussian
from ldm_jax.parallel import sharding
from ldm_jax.training import stages
from ldm_jax.training import state as state_lib

EMA_DECAY = 0.9999


@dataclasses.dataclass
class Program:
  jitted: object
  args: tuple  # The first call's arguments; with `stateful`, args[0] is the state.
  stateful: bool
  num_params: int


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _init_sharded(init_fn, mesh, rng):
  abstract = jax.eval_shape(init_fn, rng)
  shardings = sharding.tree_shardings(abstract, mesh)
  return jax.jit(init_fn, out_shardings=shardings)(rng), shardings


def _training_program(init, step, mesh, batch, third, count) -> Program:
  """step(state, batch, third) -> (state, metrics), jitted with the state's fsdp shardings,
  the batch split over the mesh and the state donated; `count(state)` -> parameters."""
  state, shardings = _init_sharded(init, mesh, jax.random.key(0))
  replicated = sharding.replicated(mesh)
  jitted = jax.jit(step, in_shardings=(shardings, sharding.batch_sharding(mesh), replicated),
                   out_shardings=(shardings, replicated), donate_argnums=0)
  return Program(jitted, (state, batch, jax.device_put(third, replicated)), True,
                 count(state))


def _put(batch: dict, mesh):
  return jax.device_put(batch, sharding.batch_sharding(mesh))


def latent_side(config) -> int:
  side, f = int(config.benchmark.image_size), _downsample(config)
  if side % f:
    raise ValueError(f"benchmark.image_size={side} is not a multiple of the autoencoder's "
                     f"downsampling factor {f}.")
  return side // f


def _downsample(config) -> int:
  if config.get("autoencoder") is None:  # Pixel space (first_stage.source='pixels').
    return 1
  return 2 ** (len(config.autoencoder.ch_mult) - 1)


def _image_channels(config) -> int:
  if config.get("autoencoder") is None:
    return int(config.data.get("channels") or 3)
  return int(config.autoencoder.in_channels)


def unet_inputs(config, batch: int, seed: int = 0) -> dict:
  """Synthetic latents (+ concatenated channels), context tokens and labels for the
  network."""
  spec, side = networks.spec(config.network), latent_side(config)
  rng = np.random.default_rng(seed)
  out = {"latents": rng.standard_normal((batch, side, side, spec.out_channels), np.float32)}
  extra = spec.in_channels - spec.out_channels
  if extra:
    out["concat"] = rng.standard_normal((batch, side, side, extra), np.float32)
  if spec.context_dim:
    out["context"] = rng.standard_normal(
        (batch, int(config.benchmark.context_tokens), spec.context_dim), np.float32)
  if spec.num_classes:
    out["label"] = rng.integers(0, spec.num_classes, (batch,)).astype(np.int32)
  return out


def unet_step(config, mesh) -> Program:
  unet = networks.build(config.network)
  schedule = schedule_config.from_config(config.diffusion, image_size=latent_side(config))
  optimizer = optax.adamw(1e-4, weight_decay=0.01)
  batch = _put(unet_inputs(config, int(config.benchmark.batch_size)), mesh)
  example = networks.example_inputs(config.network)

  def init(rng):
    params = unet.init(rng, *example)["params"]
    ema = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    return {"params": params, "opt": optimizer.init(params), "ema": ema}

  def step(state, batch, key):
    k_t, k_eps = jax.random.split(key)
    z0 = batch["latents"]
    t = schedule.draw_times(k_t, z0.shape[0])
    eps = jax.random.normal(k_eps, z0.shape, jnp.float32)
    alpha, sigma = (process.broadcast(v, z0) for v in schedule.alpha_sigma(t))
    z_t = process.q_sample(x0=z0, eps=eps, alpha=alpha, sigma=sigma)
    time = schedule.network_time(t)
    if "concat" in batch:
      z_t = jnp.concatenate([z_t, batch["concat"]], axis=-1)

    def loss_fn(params):
      out = unet.apply({"params": params}, z_t, time, batch.get("context"),
                       batch.get("label"))
      return jnp.mean((out.astype(jnp.float32) - eps) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt = optimizer.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema = state_lib.update_ema(state["ema"], params, EMA_DECAY)
    return {"params": params, "opt": opt, "ema": ema}, loss

  return _training_program(init, step, mesh, batch, jax.random.key(1),
                           lambda state: _count(state["params"]))


def ldm_inputs(stage, config, batch: int, seed: int = 0) -> dict:
  """A synthetic batch of the fields the LDM stage's step reads: images, or with
  `data.latent_key` the cached encoder moments (and frozen-text contexts), plus labels."""
  model = stage.model
  rng = np.random.default_rng(seed)
  side = int(config.benchmark.image_size)
  out = {}
  if model.cached:
    shape = model.first_stage.latent_shape(side)
    mean = rng.standard_normal((batch, *shape), np.float32)
    if model.first_stage.kind == "kl":  # Mean and log-variance, as the encoder's moments.
      mean = np.concatenate([mean, np.full_like(mean, -6.0)], axis=-1)
    out["moments"] = mean
  else:
    out["image"] = rng.uniform(-1, 1, (batch, side, side, _image_channels(config))).astype(
        np.float32)
  cond = stage.cond
  if cond.type == "class":
    out["label"] = rng.integers(0, cond.num_classes, (batch,)).astype(np.int32)
  elif cond.type == "frozen_text" and model.cached:
    out["context"] = rng.standard_normal((batch, cond.max_length, cond.context_width),
                                         np.float32)
  elif cond.type not in ("none", "low_res", "inpainting"):
    raise ValueError(f"benchmark ldm_step: conditioning.type={cond.type!r} is not "
                     f"synthesised; use a class-, un-conditional, low_res, inpainting or "
                     f"cached frozen_text point.")
  missing = [k for k in model.batch_keys if k not in out]
  if missing:
    raise ValueError(f"benchmark ldm_step: the step reads {missing}, which are not "
                     f"synthesised.")
  return out


def ldm_step(config, mesh) -> Program:
  stage = stages.create(config)
  batch = ldm_inputs(stage, config, int(config.benchmark.batch_size))
  return _training_program(stage.init_state, stage.train_step, mesh, _put(batch, mesh),
                           stage.constants, lambda state: _count(state.params["model"]["network"]))


def sampling(config, mesh) -> Program:
  """DDIM from noise to decoded images with random weights (guidance: benchmark's scale),
  the network's conditions given (as from a frozen text encoder)."""
  model = model_lib.LatentDiffusion(config)
  b = int(config.benchmark.batch_size)
  inputs = unet_inputs(config, b, seed=2)
  params, _ = _init_sharded(lambda rng: {"network": model.init_params(rng)["network"]}, mesh,
                            jax.random.key(0))
  replicated = sharding.replicated(mesh)
  fs_params = jax.device_put(model.first_stage_params, replicated)
  scale = float(config.benchmark.guidance_scale)

  def draw(params, fs_params, cond, key):
    uncond = None if scale == 1.0 else jax.tree.map(jnp.zeros_like, cond)
    k_noise, k_sample = jax.random.split(key)
    noise = jax.random.normal(k_noise, inputs["latents"].shape, jnp.float32)
    latents = model.sample_latents(params, cond, uncond, noise, key=k_sample, sampler="ddim",
                                   steps=int(config.benchmark.sampling_steps),
                                   guidance_scale=scale)
    return model.decode(fs_params, latents)

  cond = {k: v for k, v in {"concat": inputs.get("concat"), "context": inputs.get("context"),
                            "y": inputs.get("label")}.items() if v is not None}
  jitted = jax.jit(draw, in_shardings=(None, replicated, sharding.batch_sharding(mesh),
                                       replicated),
                   out_shardings=sharding.batch_sharding(mesh))
  return Program(jitted, (params, fs_params, _put(cond, mesh), jax.random.key(3)), False,
                 _count(params))


def vae_inputs(config, batch: int, seed: int = 0) -> np.ndarray:
  side, channels = int(config.benchmark.image_size), config.autoencoder.in_channels
  return np.random.default_rng(seed).uniform(-1, 1, (batch, side, side, channels)).astype(
      np.float32)


def vae_step(config, mesh) -> Program:
  model = factory.build_autoencoder(config.autoencoder)
  if config.autoencoder.type != "kl":
    raise ValueError("benchmark vae_step times a KL autoencoder (autoencoder.type='kl').")
  optimizer = optax.adamw(1e-4, weight_decay=0.01)
  images = _put({"image": vae_inputs(config, int(config.benchmark.batch_size))}, mesh)
  example = factory.autoencoder_example_inputs(config.autoencoder)

  def init(rng):
    params = model.init(rng, *example)["params"]
    return {"params": params, "opt": optimizer.init(params)}

  def step(state, batch, key):
    x = batch["image"]

    def loss_fn(params):
      moments = model.apply({"params": params}, x, method=first_stage_lib._kl_moments)  # pylint: disable=protected-access
      posterior = DiagonalGaussian.from_moments(moments)
      recon = model.apply({"params": params}, posterior.sample(key), method="decode")
      return (jnp.mean(jnp.abs(recon.astype(jnp.float32) - x))
              + 1e-6 * jnp.mean(posterior.kl()))

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt = optimizer.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

  return _training_program(init, step, mesh, images, jax.random.key(1),
                           lambda state: _count(state["params"]))


def autoencoder_step(config, mesh) -> Program:
  stage = stages.create(config)
  images = _put({"image": vae_inputs(config, int(config.benchmark.batch_size))}, mesh)
  return _training_program(
      stage.init_state, stage.train_step, mesh, images, stage.constants,
      lambda state: _count(state.params["generator"]["autoencoder"]))


def _inference(config, mesh, fn, inputs) -> Program:
  """fn(params, inputs) jitted, the autoencoder's parameters replicated (inference)."""
  model = factory.build_autoencoder(config.autoencoder)
  example = factory.autoencoder_example_inputs(config.autoencoder)
  params, _ = _init_sharded(lambda rng: model.init(rng, *example)["params"], mesh,
                            jax.random.key(0))
  batch = sharding.batch_sharding(mesh)
  jitted = jax.jit(lambda p, x: fn(model, p, x), in_shardings=(None, batch),
                   out_shardings=batch)
  return Program(jitted, (params, jax.device_put(inputs, sharding.batch_sharding(mesh))),
                 False, _count(params))


def vae_encode(config, mesh) -> Program:
  """Images to latents (the posterior's mean): what a latent cache's build runs."""
  images = vae_inputs(config, int(config.benchmark.batch_size))

  def encode(model, params, x):
    moments = model.apply({"params": params}, x, method=first_stage_lib._kl_moments)  # pylint: disable=protected-access
    return DiagonalGaussian.from_moments(moments).mean

  if config.autoencoder.type != "kl":
    raise ValueError("benchmark vae_encode times a KL autoencoder (autoencoder.type='kl').")
  return _inference(config, mesh, encode, images)


def vae_latents(config, batch: int, seed: int = 0) -> np.ndarray:
  side = latent_side(config)
  return np.random.default_rng(seed).standard_normal(
      (batch, side, side, int(config.autoencoder.embed_dim))).astype(np.float32)


def vae_decode(config, mesh) -> Program:
  """Latents to images: the last stage of sampling."""
  return _inference(config, mesh,
                    lambda model, params, z: model.apply({"params": params}, z,
                                                         method="decode"),
                    vae_latents(config, int(config.benchmark.batch_size)))


BUILDERS = {"unet_step": unet_step, "ldm_step": ldm_step, "sampling": sampling,
            "vae_step": vae_step, "autoencoder_step": autoencoder_step,
            "vae_encode": vae_encode, "vae_decode": vae_decode}
