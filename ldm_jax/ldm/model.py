"""A latent diffusion model, whole: first stage + conditioning + denoiser + schedule + objective.

    model = LatentDiffusion(config)               # config: an LDM config (configs/*ldm*.py)
    params = model.init_params(jax.random.key(0)) # {'network', 'conditioner'?, 'logvar'?}
    per_example, mse, _ = model.loss(params, model.first_stage_params, batch, keys)
    images = model.sample(params, model.first_stage_params, fields, noise=..., key=...)

What every user of the model needs and nothing more: training wraps it with an optimiser,
EMA and metrics (ldm_jax/training/ldm_stage.py); sampling (ldm_jax/sampling), the digits
report and the benchmark call `sample` / `loss` directly. All methods are pure functions of
their arguments (parameters are passed in, never held), so they jit and shard as they are.

The frozen first stage's parameters (`first_stage_params`) are loaded with the model but
kept apart from the trained ones: never in an optimiser, never donated, never checkpointed
with the run.

The objective: x -> z0 = scale_factor * E(x) (a posterior sample) -> t ~ U{0..T-1} (a
continuous schedule: U(0, 1)), eps ~ N(0, I) -> z_t -> network(z_t [+ concat], the schedule's
time input at t, context, y) -> `diffusion.losses` (eps / x0 / v target, weighting, CompVis'
logvar and VLB terms).
"""

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from ldm_jax.diffusion import guidance
from ldm_jax.diffusion import losses
from ldm_jax.diffusion import process
from ldm_jax.diffusion import samplers
from ldm_jax.diffusion import schedule_config
from ldm_jax.ldm import cache_metadata
from ldm_jax.ldm import first_stage as first_stage_lib
from ldm_jax.ldm import modes
from ldm_jax.models import networks

# Keys of the random streams `loss` takes in training mode.
TRAIN_KEYS = ("posterior", "dropout", "t", "eps", "mask", "network_dropout")


class LatentDiffusion:
  """One LDM config -> the model's pure functions (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config = networks.migrate_config(config)
    self.diffusion = config.diffusion
    self.network_spec = networks.spec(config.network)
    self.first_stage, self.first_stage_params = first_stage_lib.load(config)
    self.cond = modes.create(config, self.first_stage)
    self.latent_shape = self.first_stage.latent_shape(config.data.image_size)
    self.schedule = schedule_config.from_config(config.diffusion,
                                                image_size=self.latent_shape[0])
    if self.diffusion.prediction not in process.PREDICTIONS:
      raise ValueError(f"diffusion.prediction={self.diffusion.prediction!r}: expected one "
                       f"of {process.PREDICTIONS}.")
    if self.diffusion.weighting not in losses.WEIGHTINGS:
      raise ValueError(f"diffusion.weighting={self.diffusion.weighting!r}: expected one of "
                       f"{losses.WEIGHTINGS}.")
    if self.schedule.continuous and (self.diffusion.learn_logvar or
                                     self.diffusion.elbo_weight):
      raise ValueError(f"diffusion.learn_logvar and diffusion.elbo_weight are per-timestep "
                       f"tables of a discrete schedule; diffusion.schedule="
                       f"{self.schedule.name!r} is continuous: set them to False and 0.")
    self.vlb_table = None
    if self.diffusion.elbo_weight:
      if self.diffusion.weighting != "uniform":
        raise ValueError("diffusion.elbo_weight > 0 adds CompVis' VLB term to the uniform "
                         "loss; set diffusion.weighting='uniform'.")
      self.vlb_table = losses.vlb_weights(self.schedule.discrete.alphas_cumprod,
                                          self.diffusion.prediction)
    multiscale = self.diffusion.get("multiscale_base")
    if multiscale:
      losses.multiscale_sizes(self.latent_shape[0], int(multiscale))  # Raises if it cannot.
    if self.network_spec.logsnr_input and not (
        self.schedule.continuous and self.schedule.time_input == "logsnr"):
      raise ValueError(f"network.logsnr_input=True embeds the logSNR: set diffusion.time_input="
                       f"'logsnr' with a continuous schedule (diffusion.schedule="
                       f"{self.schedule.name!r}, time_input="
                       f"{self.diffusion.get('time_input')!r}).")
    self.network = networks.build(config.network)
    self.train_network = networks.build(config.network,
                                        deterministic=not self.network_spec.dropout)
    self.cached = bool(config.data.get("latent_key"))
    if self.cached:  # Encodings stored by ldm_jax/ldm/latent_cache.py.
      if not self.cond.CACHEABLE:
        raise ValueError(f"data.latent_key is set, but conditioning.type={self.cond.type!r} "
                         f"needs the images; train it without a latent cache.")
      if config.data.get("name") is None:  # Synthetic encodings (benchmark.py's ldm_step).
        logging.warning("data.latent_key=%r without data.name: no latent cache to check "
                        "against this run's first stage.", config.data.latent_key)
      else:
        cache_metadata.check(config.data.name, self.first_stage, self.first_stage_params,
                             self.cond if self.cond.FROZEN else None)
    # The batch fields `loss` reads ('tokens': captions through `cond.host_fields`).
    self.batch_keys = ("moments" if self.cached else "image",) + tuple(
        k for k in self.cond.batch_keys if k != "image")

  @property
  def num_timesteps(self) -> int:
    return self.schedule.num_timesteps

  @property
  def prediction(self) -> str:
    return self.diffusion.prediction

  # --- parameters ----------------------------------------------------------------------------
  def init_params(self, rng):
    """{'network': the denoiser, 'conditioner': trained embedder (class/text), 'logvar': [T]
    (when diffusion.learn_logvar)}."""
    k_net, k_cond = jax.random.split(rng)
    inputs = networks.example_inputs(self.config.network)
    params = {"network": self.network.init(k_net, *inputs)["params"]}
    conditioner = self.cond.init(k_cond)
    if conditioner is not None:
      params["conditioner"] = conditioner
    if self.diffusion.learn_logvar:
      params["logvar"] = jnp.full((self.num_timesteps,), self.diffusion.logvar_init,
                                  jnp.float32)
    return params

  def param_shapes(self):
    """`init_params`' tree as ShapeDtypeStructs (nothing allocated)."""
    return jax.eval_shape(self.init_params, jax.random.key(0))

  @property
  def frozen_params(self) -> dict:
    """Pretrained parameters that never train, by the key `loss` / `sample` read them
    under: {'conditioner': a frozen text encoder's} (conditioning.type='frozen_text'), else
    {}. Kept out of `init_params`, optimisers and checkpoints."""
    return {"conditioner": self.cond.frozen_params} if self.cond.FROZEN else {}

  def with_frozen(self, params, frozen=None):
    """`params` with the frozen parameters beside them (`frozen`: those, already placed on
    devices; default `frozen_params`), as `loss` and `sample` take them."""
    frozen = self.frozen_params if frozen is None else frozen
    return {**params, **frozen} if frozen else params

  # --- first stage ---------------------------------------------------------------------------
  def encode(self, first_stage_params, images, key=None):
    """Scaled latents of images in [-1, 1] (a posterior sample with `key`, else its mode)."""
    return self.first_stage.encode(first_stage_params, images, key)

  def decode(self, first_stage_params, latents):
    """Images in [-1, 1] (clipped) from scaled latents."""
    return jnp.clip(self.first_stage.decode(first_stage_params, latents), -1.0, 1.0)

  # --- the objective -------------------------------------------------------------------------
  def loss_inputs(self, first_stage_params, batch, keys, *, train: bool = True):
    """Everything the loss draws: z0, t, eps, z_t, the concatenation, the keep flags, and
    `time`, the network's time input at t.

    train: a posterior sample, t ~ U{0..T-1} (U(0, 1) for a continuous schedule) and
    condition dropout, from `keys` (TRAIN_KEYS); otherwise the posterior mode, times spread
    evenly over the batch and every condition kept (keys 'eps' and 'mask' only), so that
    evaluations compare across steps.
    """
    if self.cached:
      moments = batch["moments"].astype(jnp.float32)
    else:
      moments = self.first_stage.moments(first_stage_params, batch["image"])
    b = moments.shape[0]
    if train:
      z0 = self.first_stage.from_moments(moments, key=keys["posterior"])
      keep = self.cond.keep_flags(keys["dropout"], b)
      t = self.schedule.draw_times(keys["t"], b)
    else:
      z0 = self.first_stage.from_moments(moments)
      keep = jnp.ones((b,), jnp.float32)
      t = self.schedule.even_times(b)
    z0 = jax.lax.stop_gradient(z0)
    eps = jax.random.normal(keys["eps"], z0.shape, jnp.float32)
    alpha, sigma = (process.broadcast(v, z0) for v in self.schedule.alpha_sigma(t))
    z_t = process.q_sample(x0=z0, eps=eps, alpha=alpha, sigma=sigma)
    concat = self.cond.concat(first_stage_params, batch, keep, keys["mask"])
    return dict(z_t=z_t, z0=z0, eps=eps, t=t, time=self.schedule.network_time(t),
                alpha=alpha, sigma=sigma, concat=concat, keep=keep)

  def loss_from_inputs(self, params, batch, inputs, *, dropout_key=None):
    """(per-example objective [B], per-example unweighted MSE [B]). With `dropout_key` the
    network runs in training mode (its dropout drawn from the key)."""
    context, y = self.cond.context_and_labels(params.get("conditioner"), batch,
                                              inputs["keep"])
    z_t, concat = inputs["z_t"], inputs["concat"]
    x = z_t if concat is None else jnp.concatenate([z_t, concat], axis=-1)
    network = self.network if dropout_key is None else self.train_network
    out = network.apply({"params": params["network"]}, x, inputs["time"], context, y,
                        rngs=None if dropout_key is None else {"dropout": dropout_key})
    kw = dict(prediction=self.prediction, model_out=out, x0=inputs["z0"], eps=inputs["eps"],
              alpha=inputs["alpha"], sigma=inputs["sigma"])
    mse = losses.diffusion_loss(**kw)
    multiscale = self.diffusion.get("multiscale_base")
    weighted = mse if (self.diffusion.weighting == "uniform" and not multiscale) else (
        losses.diffusion_loss(**kw, weighting=self.diffusion.weighting,
                              gamma=self.diffusion.min_snr_gamma, multiscale_base=multiscale))
    per_example = losses.ldm_objective(
        weighted, inputs["t"], logvar=params.get("logvar"), vlb_weight_table=self.vlb_table,
        simple_weight=self.diffusion.simple_weight, elbo_weight=self.diffusion.elbo_weight)
    return per_example, mse

  def loss(self, params, first_stage_params, batch, keys, *, train: bool = True):
    """(per-example objective, per-example MSE, the drawn inputs) of one batch."""
    inputs = self.loss_inputs(first_stage_params, batch, keys, train=train)
    per_example, mse = self.loss_from_inputs(
        params, batch, inputs, dropout_key=keys["network_dropout"] if train else None)
    return per_example, mse, inputs

  # --- sampling ------------------------------------------------------------------------------
  def model_fn(self, params, on_call=None, steps: int | None = None):
    """model_fn(x, t, cond) for the samplers walking `schedule.sampling_table(steps)`,
    `cond` from `condition`. `on_call(t)`, if given, runs on the host at every network call
    (a progress bar)."""
    def fn(x, t, cond):
      if on_call is not None:
        jax.debug.callback(on_call, t[0])
      inputs = x if cond.get("concat") is None else jnp.concatenate(
          [x, cond["concat"].astype(x.dtype)], axis=-1)
      out = self.network.apply({"params": params["network"]}, inputs,
                               self.schedule.network_time_of_step(t, steps),
                               cond.get("context"),
                               cond.get("y"))
      return out.astype(jnp.float32)
    return fn

  def condition(self, params, first_stage_params, fields, count: int, side: int, *,
                keep: bool = True):
    """The network's condition {'concat', 'context', 'y'} for `count` samples of latent side
    `side` from explicit fields (`label`, `tokens`, or the concatenation's images/maps, see
    the mode's `network_inputs`); keep=False gives the null condition (guidance)."""
    flags = jnp.full((count,), 1.0 if keep else 0.0, jnp.float32)
    return self.cond.network_inputs(params.get("conditioner"), first_stage_params, fields,
                                    flags, side)

  def noise(self, key, count: int, side: int | tuple[int, int] | None = None):
    """Starting latents [count, h, w, channels] ~ N(0, I); `side`: h = w, or (h, w)
    (default: the model's latent size)."""
    side = self.latent_shape[0] if side is None else side
    height, width = (side, side) if isinstance(side, int) else side
    return jax.random.normal(key, (count, height, width, self.first_stage.channels),
                             jnp.float32)

  def sample_latents(self, params, cond, uncond, noise, *, key=None, sampler: str = "ddim",
                     steps: int = 50, eta: float = 0.0, guidance_scale: float = 1.0,
                     guidance_rescale: float = 0.0, on_call=None):
    """Latents drawn from `noise` under network conditions `cond` (and `uncond` for
    guidance_scale != 1): {'concat', 'context', 'y'} as `condition` makes them."""
    model_fn = self.model_fn(params, on_call, steps)
    if guidance_scale != 1.0:
      if uncond is None:
        raise ValueError("guidance_scale != 1 needs the unconditional inputs (uncond).")
      guided = guidance.cfg_model_fn(model_fn, guidance_scale, guidance_rescale)
      fn = lambda x, t: guided(x, t, cond, uncond)
    else:
      fn = lambda x, t: model_fn(x, t, cond)
    key = jax.random.key(0) if key is None else key
    table = self.schedule.sampling_table(steps)
    return samplers.sample(fn, table, noise, key=key, sampler=sampler, steps=steps,
                           prediction=self.prediction, eta=eta,
                           **self.scheduler_settings(table, steps, sampler))

  def scheduler_settings(self, table, steps: int, sampler: str) -> dict:
    """config.sampling's `steps_offset` (added to the 'leading' timesteps of ddim, ddpm and
    plms) and `set_alpha_to_one` (False: alpha^2 past the last step is alphas_cumprod[0]),
    diffusers' scheduler settings; Stable Diffusion's are 1 and False."""
    block = self.config.sampling
    offset = int(block.get("steps_offset", 0))
    if offset < 0:
      raise ValueError(f"sampling.steps_offset={offset}: expected >= 0.")
    last = (steps - 1) * (table.num_timesteps // steps) + offset
    if sampler != "dpm_solver++" and not 0 <= last < table.num_timesteps:
      raise ValueError(f"sampling.steps_offset={offset} with steps={steps}: the first "
                       f"timestep would be {last}, outside 0 .. {table.num_timesteps - 1}; "
                       f"use fewer steps or steps_offset=0.")
    settings = {"timestep_offset": offset}
    if not block.get("set_alpha_to_one", True):
      settings["final_alpha_cumprod"] = table.alphas_cumprod[0]
    return settings

  def sample(self, params, first_stage_params, fields, *, noise, guidance_scale: float = 1.0,
             **settings):
    """Images in [-1, 1] drawn from the starting latents `noise` [B, h, w, c] under the
    conditions `fields` (see `condition`). `settings`: those of `sample_latents` (`key`
    feeds the stochastic samplers: ddpm, ddim with eta > 0). guidance_scale != 1 is
    classifier-free guidance against the null condition."""
    count, side = noise.shape[0], noise.shape[1]
    cond = self.condition(params, first_stage_params, fields, count, side)
    uncond = None if guidance_scale == 1.0 else self.condition(
        params, first_stage_params, fields, count, side, keep=False)
    latents = self.sample_latents(params, cond, uncond, noise,
                                  guidance_scale=guidance_scale, **settings)
    return self.decode(first_stage_params, latents)

  def sample_with(self, params, first_stage_params, fields, key, count: int, sampling):
    """`count` images under `fields`, noise and sampler randomness drawn from `key`, with a
    config's `sampling` block (sampler, steps, eta, guidance_scale): sample grids and the
    digits report."""
    k_noise, k_sample = jax.random.split(key)
    return self.sample(params, first_stage_params, fields,
                       noise=self.noise(k_noise, count), key=k_sample,
                       sampler=sampling.sampler, steps=int(sampling.steps),
                       eta=float(sampling.eta), guidance_scale=float(sampling.guidance_scale))
