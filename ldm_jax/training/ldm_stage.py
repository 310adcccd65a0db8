"""Stage two: latent diffusion on the latents of a frozen first stage (CompVis LatentDiffusion).

Trained parameters: `params['model'] = {'unet', 'conditioner' (class/text embedders,
trained jointly), 'logvar' (when diffusion.learn_logvar)}`, one optimiser. The frozen
autoencoder's parameters are a jit *argument* (`consts['first_stage']`), so they are never in
the optimiser, never donated and never checkpointed with the run.

One step: x -> z0 = scale_factor * E(x) (a posterior sample) -> t ~ U{0..T-1}, eps ~ N(0, I)
-> z_t -> UNet(z_t [+ concat], t, context, y) -> `diffusion.losses` (eps / x0 / v target,
weighting, CompVis' logvar and VLB terms) -> optax update -> EMA (float32, CompVis LitEma
warm-up: decay_n = min(decay, (1 + n) / (10 + n)) at the n-th update).
"""


import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from ldm_jax import visualize
from ldm_jax.diffusion import losses
from ldm_jax.diffusion import process
from ldm_jax.ldm import conditions
from ldm_jax.ldm import first_stage as first_stage_lib
from ldm_jax.ldm import generate
from ldm_jax.models import factory
from ldm_jax.training import optim
from ldm_jax.training import stages
from ldm_jax.training import state as state_lib
from ldm_jax.training.state import TrainState


def ema_decay(block: ml_collections.ConfigDict, num_updates):
  """The decay of the `num_updates`-th EMA update (1-based)."""
  decay = jnp.asarray(block.decay, jnp.float32)
  if block.get("warmup", True):
    n = jnp.asarray(num_updates, jnp.float32)
    decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
  return decay


class LdmStage:

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.diffusion = config.diffusion
    self.first_stage, fs_params = first_stage_lib.load(config)
    self.cond = conditions.Conditioning(config, self.first_stage)
    self.schedule = generate.schedule_from_config(config.diffusion)
    self.num_timesteps = self.schedule.num_timesteps
    if self.diffusion.prediction not in process.PREDICTIONS:
      raise ValueError(f"diffusion.prediction={self.diffusion.prediction!r}: expected one "
                       f"of {process.PREDICTIONS}.")
    if self.diffusion.weighting not in losses.WEIGHTINGS:
      raise ValueError(f"diffusion.weighting={self.diffusion.weighting!r}: expected one of "
                       f"{losses.WEIGHTINGS}.")
    self.vlb_table = None
    if self.diffusion.elbo_weight:
      if self.diffusion.weighting != "uniform":
        raise ValueError("diffusion.elbo_weight > 0 adds CompVis' VLB term to the uniform "
                         "loss; set diffusion.weighting='uniform'.")
      self.vlb_table = losses.vlb_weights(self.schedule.alphas_cumprod,
                                          self.diffusion.prediction)
    self.unet = factory.build_unet(config.unet)
    self.train_unet = factory.build_unet(config.unet, deterministic=not config.unet.dropout)
    self.latent_shape = self.first_stage.latent_shape(config.data.image_size)
    self.cached = bool(config.data.get("latent_key"))
    if self.cached:  # Encodings stored by ldm_jax/ldm/latent_cache.py.
      from ldm_jax.ldm import latent_cache  # pylint: disable=import-outside-toplevel
      if self.cond.type not in latent_cache.CACHEABLE:
        raise ValueError(f"data.latent_key is set, but conditioning.type={self.cond.type!r} "
                         f"needs the images; train it without a latent cache.")
      latent_cache.check(config.data.name, self.first_stage, fs_params)
    self.batch_keys = ("moments" if self.cached else "image",) + tuple(
        k for k in self.cond.batch_keys if k != "image")
    self.constants = {"first_stage": fs_params} if fs_params is not None else {}
    self.ema = config.get("ema")
    abstract = jax.eval_shape(self._init_params, jax.random.key(0))
    self.optimizers = {"model": optim.create_optimizer(config.optimizer,
                                                       num_steps=config.num_steps,
                                                       params=abstract)}
    self._grid_fn = None

  # --- host side ---------------------------------------------------------------------------
  def prepare(self, batch: dict, mesh, extra=()) -> dict:
    """The fields the jitted steps take; captions become a global array of token ids."""
    if self.cond.type == "text":
      if "caption" not in batch:
        raise KeyError("conditioning.type='text' needs captions: set data.caption_key.")
      from ldm_jax.parallel import sharding  # pylint: disable=import-outside-toplevel
      tokens = self.cond.tokenize(np.asarray(batch["caption"]))
      batch = {**batch, "tokens": jax.make_array_from_process_local_data(
          sharding.batch_sharding(mesh), tokens)}
    return stages.select(batch, self.batch_keys + tuple(extra))

  # --- state -------------------------------------------------------------------------------
  def _init_params(self, rng):
    k_unet, k_cond = jax.random.split(rng)
    inputs = list(factory.unet_example_inputs(self.config.unet))
    params = {"unet": nn.unbox(self.unet.init(k_unet, *inputs)["params"])}
    conditioner = self.cond.init(k_cond)
    if conditioner is not None:
      params["conditioner"] = conditioner
    if self.diffusion.learn_logvar:
      params["logvar"] = jnp.full((self.num_timesteps,), self.diffusion.logvar_init,
                                  jnp.float32)
    return params

  def init_state(self, rng) -> TrainState:
    params = {"model": self._init_params(rng)}
    return TrainState.create(params=params, optimizers=self.optimizers, rng=rng,
                             ema=bool(self.ema and self.ema.decay))

  def sampling_params(self, state: TrainState):
    """EMA parameters when the run keeps them, else the trained ones."""
    return (state.ema_params or state.params)["model"]

  # --- the objective -----------------------------------------------------------------------
  def _noised(self, z0, t, eps):
    alpha = process.broadcast(jnp.sqrt(self.schedule.alphas_cumprod[t]), z0)
    sigma = process.broadcast(jnp.sqrt(self.schedule.sigmas_squared[t]), z0)
    return process.q_sample(x0=z0, eps=eps, alpha=alpha, sigma=sigma), alpha, sigma

  def _loss(self, params, batch, z_t, z0, eps, t, alpha, sigma, concat, keep, unet, key):
    context, y = self.cond.context_and_labels(params.get("conditioner"), batch, keep)
    inputs = z_t if concat is None else jnp.concatenate([z_t, concat], axis=-1)
    out = unet.apply({"params": params["unet"]}, inputs, t, context, y,
                     rngs=None if key is None else {"dropout": key})
    kw = dict(prediction=self.diffusion.prediction, model_out=out, x0=z0, eps=eps,
              alpha=alpha, sigma=sigma)
    mse = losses.diffusion_loss(**kw)
    weighted = mse if self.diffusion.weighting == "uniform" else losses.diffusion_loss(
        **kw, weighting=self.diffusion.weighting, gamma=self.diffusion.min_snr_gamma)
    per_example = losses.ldm_objective(
        weighted, t, logvar=params.get("logvar"), vlb_weight_table=self.vlb_table,
        simple_weight=self.diffusion.simple_weight, elbo_weight=self.diffusion.elbo_weight)
    return per_example, mse

  def _inputs(self, batch, consts, keys, *, eval_mode: bool):
    fs = consts.get("first_stage")
    if self.cached:
      moments = batch["moments"].astype(jnp.float32)
    else:
      moments = self.first_stage.moments(fs, batch["image"])
    b = moments.shape[0]
    if eval_mode:
      z0 = self.first_stage.from_moments(moments)
      keep = jnp.ones((b,), jnp.float32)
      t = ((jnp.arange(b) + 0.5) * self.num_timesteps / b).astype(jnp.int32)
    else:
      z0 = self.first_stage.from_moments(moments, key=keys["posterior"])
      keep = self.cond.keep_flags(keys["dropout"], b)
      t = jax.random.randint(keys["t"], (b,), 0, self.num_timesteps)
    z0 = jax.lax.stop_gradient(z0)
    eps = jax.random.normal(keys["eps"], z0.shape, jnp.float32)
    z_t, alpha, sigma = self._noised(z0, t, eps)
    concat = self.cond.concat(fs, batch, keep, keys["mask"])
    return dict(z_t=z_t, z0=z0, eps=eps, t=t, alpha=alpha, sigma=sigma, concat=concat,
                keep=keep)

  # --- steps -------------------------------------------------------------------------------
  def train_step(self, state: TrainState, batch, consts):
    keys = {k: state.step_key(k) for k in ("posterior", "dropout", "t", "eps", "mask",
                                           "unet_dropout")}
    inputs = self._inputs(batch, consts, keys, eval_mode=False)

    def loss_fn(params):
      per_example, mse = self._loss(params, batch, **inputs, unet=self.train_unet,
                                    key=keys["unet_dropout"])
      return per_example.mean(), {"loss": per_example.mean(), "mse": mse.mean()}

    params = state.params["model"]
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = self.optimizers["model"].update(grads, state.opt_state["model"],
                                                          params)
    new_params = {"model": optax.apply_updates(params, updates)}
    new_state = state.replace(params=new_params, opt_state={"model": opt_state})
    extra = {}
    if state.ema_params is not None:
      decay = ema_decay(self.ema, state.step + 1)
      new_state = new_state.replace(ema_params=jax.tree.map(
          lambda e, p: e + (1.0 - decay) * (p.astype(jnp.float32) - e),
          state.ema_params, new_params))
      extra["ema_decay"] = decay
    finite = state_lib.all_finite(grads, metrics)
    metrics = {**metrics, **extra, "grad_norm": optax.tree_utils.tree_norm(grads),
               "kept_conditions": inputs["keep"].mean(),
               "learning_rate": optim.current_learning_rate(self.config.optimizer,
                                                            self.config.num_steps, state.step),
               "finite": finite.astype(jnp.float32)}
    return state_lib.keep_if(finite, new_state, state), metrics

  def eval_step(self, state: TrainState, batch, consts):
    """Loss of the sampling (EMA) parameters at timesteps spread evenly over the batch,
    with fixed noise: comparable from one evaluation to the next."""
    key = jax.random.key(self.config.seed + 2)
    keys = {k: jax.random.fold_in(key, i) for i, k in enumerate(("eps", "mask"))}
    inputs = self._inputs(batch, consts, keys, eval_mode=True)
    per_example, mse = self._loss(self.sampling_params(state), batch, **inputs,
                                  unet=self.unet, key=None)
    mask = batch["mask"].astype(jnp.float32)
    return {"loss": (per_example * mask).sum(), "mse": (mse * mask).sum(),
            "count": mask.sum()}

  # --- samples -----------------------------------------------------------------------------
  def grid_conditions(self, batch: dict | None) -> tuple[dict, int]:
    """(host batch of conditions for the sample grid, number of columns)."""
    sampling = self.config.sampling
    per_row = int(sampling.per_row)
    if self.cond.type == "class":
      shown = min(self.cond.num_classes, int(sampling.max_rows))
      labels = np.repeat(np.arange(shown, dtype=np.int32), per_row)
      return {"label": labels}, per_row
    if self.cond.type == "text":
      prompts = list(sampling.prompts)
      if not prompts:
        raise ValueError("sampling.prompts is empty: give the captions of the sample grid.")
      tokens = self.cond.tokenize(np.repeat(np.asarray(prompts, object), per_row))
      return {"tokens": tokens}, per_row
    if self.cond.type == "none":
      return {}, per_row
    # Concatenation: conditions from the evaluation batch, one column per example.
    count = min(per_row, batch["image"].shape[0])
    return {k: v[:count] for k, v in batch.items() if k != "mask"}, count

  def sample_images_fn(self):
    """jit(fn(params, first_stage_params, conditions, key, count) -> images [-1, 1]):
    `conditions` holds `label` / `tokens` / the concatenation's batch fields for `count`
    samples; `config.sampling` sets sampler, steps and guidance."""
    if self._grid_fn is None:
      self._grid_fn = jax.jit(self._sample, static_argnums=4)
    return self._grid_fn

  def _sample(self, params, fs_params, grid_batch, key, count):
    k_mask, k_sample = jax.random.split(key)
    ones = jnp.ones((count,), jnp.float32)
    cparams = params.get("conditioner")
    cond = self.cond.inputs(cparams, fs_params, grid_batch, ones, k_mask)
    scale = float(self.config.sampling.guidance_scale)
    uncond = self.cond.inputs(cparams, fs_params, grid_batch, 0.0 * ones, k_mask) if (
        scale != 1.0) else None
    sampling = self.config.sampling
    latents = generate.sample_latents(
        self.unet, params["unet"], self.schedule, cond, uncond, k_sample,
        (count,) + self.latent_shape, prediction=self.diffusion.prediction,
        sampler=sampling.sampler, steps=int(sampling.steps), eta=float(sampling.eta),
        guidance_scale=scale)
    return jnp.clip(self.first_stage.decode(fs_params, latents), -1.0, 1.0)

  def sample_grid(self, state: TrainState, batch: dict | None, consts=None) -> np.ndarray:
    """An HWC uint8 grid: one row per class / prompt, or condition / sample / truth rows."""
    consts = self.constants if consts is None else consts
    if batch is not None:
      batch = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
               for k, v in batch.items()}
    grid_batch, columns = self.grid_conditions(batch)
    count = len(next(iter(grid_batch.values()))) if grid_batch else (
        columns * int(self.config.sampling.max_rows))
    key = jax.random.key(self.config.seed + 3)
    images = np.asarray(self.sample_images_fn()(self.sampling_params(state), consts.get("first_stage"),
                                      grid_batch, key, count))
    if self.cond.type in conditions.CONCAT_TYPES:
      rows = [self._show_condition(grid_batch, key), images, grid_batch["image"]]
      images = np.concatenate([np.asarray(r, np.float32) for r in rows])
    return visualize.make_grid(images, columns=columns)

  def _show_condition(self, grid_batch, key):
    """The condition as an image of the sample's size, for the grid's first row."""
    image = np.asarray(grid_batch["image"], np.float32)
    b, size, _, channels = image.shape
    if self.cond.type == "inpainting":
      mask = np.asarray(conditions.box_masks(jax.random.split(key)[0], b, size))
      return image * (1.0 - mask)
    if self.cond.type == "low_res":
      low = self.cond.low_res(grid_batch[self.cond.key] if self.cond.key else image,
                              size // self.first_stage.downsample)
      return np.asarray(jax.image.resize(low, image.shape, "nearest"))
    cond = np.asarray(grid_batch[self.cond.key], np.float32)
    if self.cond.type == "semantic":
      cond = cond[..., :1] if cond.ndim == 4 else cond[..., None]
      cond = cond / max(self.cond.concat_channels - 1, 1) * 2.0 - 1.0
    if cond.shape[-1] != channels:
      cond = np.repeat(cond.mean(axis=-1, keepdims=True), channels, axis=-1)
    return np.asarray(jax.image.resize(cond, image.shape, "nearest"))

  def image_grids(self, state: TrainState, batch):
    return {"samples": self.sample_grid(state, batch)[None]}

  def finalize(self, state: TrainState, config, mesh, abandon=None):
    """Nothing beyond the loop's last evaluation and sample grid."""
    del state, config, mesh, abandon
    return {}
