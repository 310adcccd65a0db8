"""Samplers over a DiscreteSchedule, driven by `model_fn(x, t) -> prediction`.

Each sampler is a pure step function (state in, state out; noise passed in) and one
`lax.scan` loop over its timesteps. Timesteps follow diffusers' 'leading' spacing:
t_i = i * (T // N) + offset, walked from the largest down.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.diffusion import process
from ldm_jax.diffusion.schedules import DiscreteSchedule

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


def leading_timesteps(num_timesteps: int, num_steps: int, offset: int = 0) -> np.ndarray:
  """Descending int32 timesteps: (0, r, 2r, ...) * ... + offset with r = T // N."""
  if not 0 < num_steps <= num_timesteps:
    raise ValueError(f"steps={num_steps}: expected 1 .. {num_timesteps} (the schedule's T).")
  ratio = num_timesteps // num_steps
  return (np.arange(num_steps, dtype=np.int64) * ratio + offset)[::-1].astype(np.int32)


def _alphas(schedule: DiscreteSchedule, t, final_alpha_cumprod):
  """alphas_cumprod at t, or `final_alpha_cumprod` where t < 0 (past the last step)."""
  safe = jnp.clip(t, 0, schedule.num_timesteps - 1)
  return jnp.where(t >= 0, schedule.alphas_cumprod[safe], final_alpha_cumprod)


def ddim_step(schedule: DiscreteSchedule, *, prediction: str, x, out, t, t_prev,
              eta: float = 0.0, noise=None, final_alpha_cumprod: float = 1.0):
  """One DDIM step t -> t_prev (Song et al.); eta = 1 is DDPM-like ancestral noise."""
  a_t = process.broadcast(_alphas(schedule, t, final_alpha_cumprod), x)
  a_prev = process.broadcast(_alphas(schedule, t_prev, final_alpha_cumprod), x)
  alpha, sigma = jnp.sqrt(a_t), jnp.sqrt(1.0 - a_t)
  x0 = process.x0_from(prediction=prediction, x=x, out=out, alpha=alpha, sigma=sigma)
  eps = process.eps_from(prediction=prediction, x=x, out=out, alpha=alpha, sigma=sigma)
  variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
  std = eta * jnp.sqrt(variance)
  x_prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev - std**2) * eps
  if noise is not None:
    x_prev = x_prev + std * noise
  return x_prev, x0


def ddpm_step(schedule: DiscreteSchedule, *, prediction: str, x, out, t, t_prev,
              noise=None):
  """One ancestral step t -> t_prev with the posterior variance ('fixed_small')."""
  a_t = process.broadcast(_alphas(schedule, t, 1.0), x)
  a_prev = process.broadcast(_alphas(schedule, t_prev, 1.0), x)
  alpha, sigma = jnp.sqrt(a_t), jnp.sqrt(1.0 - a_t)
  x0 = process.x0_from(prediction=prediction, x=x, out=out, alpha=alpha, sigma=sigma)
  step_alpha = a_t / a_prev
  step_beta = 1.0 - step_alpha
  mean = (jnp.sqrt(a_prev) * step_beta / (1.0 - a_t) * x0
          + jnp.sqrt(step_alpha) * (1.0 - a_prev) / (1.0 - a_t) * x)
  if noise is not None:
    variance = jnp.maximum((1.0 - a_prev) / (1.0 - a_t) * step_beta, 1e-20)
    last = process.broadcast(t_prev < 0, x)
    mean = mean + jnp.where(last, 0.0, jnp.sqrt(variance)) * noise
  return mean, x0


def sample(model_fn: ModelFn, schedule: DiscreteSchedule, x_T, *, key=None,
           sampler: str = "ddim", steps: int = 50, prediction: str = "eps",
           eta: float = 0.0, timestep_offset: int = 0, final_alpha_cumprod: float = 1.0,
           return_intermediates: bool = False):
  """Runs `sampler` ('ddim' or 'ddpm') from x_T over `steps` leading timesteps.

  Returns the final sample, or (sample, per-step x0 predictions) with return_intermediates.
  `key` is needed whenever the sampler adds noise (ddpm, or ddim with eta > 0).
  """
  if sampler not in ("ddim", "ddpm"):
    raise ValueError(f"sampler={sampler!r}: expected 'ddim' or 'ddpm'.")
  stochastic = sampler == "ddpm" or eta > 0
  if stochastic and key is None:
    raise ValueError(f"sampler={sampler!r} with eta={eta} adds noise: pass a PRNG key.")
  timesteps = leading_timesteps(schedule.num_timesteps, steps, timestep_offset)
  ratio = schedule.num_timesteps // steps
  pairs = jnp.asarray(np.stack([timesteps, timesteps - ratio], axis=1))
  keys = jax.random.split(key, steps) if stochastic else jnp.zeros((steps,), jnp.uint32)

  def body(x, inputs):
    (t, t_prev), step_key = inputs
    batch_t = jnp.full(x.shape[:1], t, jnp.int32)
    out = model_fn(x, batch_t)
    noise = jax.random.normal(step_key, x.shape, x.dtype) if stochastic else None
    if sampler == "ddim":
      x, x0 = ddim_step(schedule, prediction=prediction, x=x, out=out, t=t, t_prev=t_prev,
                        eta=eta, noise=noise, final_alpha_cumprod=final_alpha_cumprod)
    else:
      x, x0 = ddpm_step(schedule, prediction=prediction, x=x, out=out, t=t, t_prev=t_prev,
                        noise=noise)
    return x, x0 if return_intermediates else None

  x, x0s = jax.lax.scan(body, x_T, (pairs, keys))
  return (x, x0s) if return_intermediates else x
