"""Sampling a latent diffusion model: conditions -> latents -> images, all pure functions.

Used for the training stage's sample grids and by sample.py. `cond` / `uncond` are the
`{'concat', 'context', 'y'}` dicts of `conditions.Conditioning.inputs`.
"""

import jax
import jax.numpy as jnp
import ml_collections

from ldm_jax.diffusion import guidance
from ldm_jax.diffusion import samplers
from ldm_jax.diffusion import schedules

SCHEDULES = ("linear", "sqrt_linear", "cosine")


def schedule_from_config(block: ml_collections.ConfigDict) -> schedules.DiscreteSchedule:
  """`config.diffusion`'s noise schedule (CompVis names: 'linear' is sqrt-linear betas)."""
  kind, steps = block.schedule, int(block.num_timesteps)
  if kind == "linear":
    schedule = schedules.linear(steps, block.linear_start, block.linear_end)
  elif kind == "sqrt_linear":
    schedule = schedules.sqrt_linear(steps, block.linear_start, block.linear_end)
  elif kind == "cosine":
    schedule = schedules.cosine(steps)
  else:
    raise ValueError(f"diffusion.schedule={kind!r}: expected one of {SCHEDULES} ('linear' "
                     f"is DDPM's betas, 'sqrt_linear' CompVis' and Stable Diffusion's).")
  if block.get("zero_terminal_snr"):
    schedule = schedules.rescale_zero_terminal_snr(schedule)
  return schedule


def unet_model_fn(unet, params, on_call=None):
  """model_fn(x, t, cond) for the samplers: concatenates cond['concat'] to x. `on_call(t)`,
  if given, runs on the host at every model call (a progress bar)."""
  def fn(x, t, cond):
    if on_call is not None:
      jax.debug.callback(on_call, t[0])
    inputs = x if cond.get("concat") is None else jnp.concatenate(
        [x, cond["concat"].astype(x.dtype)], axis=-1)
    out = unet.apply({"params": params}, inputs, t, cond.get("context"), cond.get("y"))
    return out.astype(jnp.float32)
  return fn


def sample_latents(unet, params, schedule, cond, uncond, key, shape, *, prediction: str,
                   sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
                   guidance_scale: float = 1.0, guidance_rescale: float = 0.0, x_T=None,
                   on_call=None):
  """Latents [shape] drawn with `sampler`; guidance_scale != 1 needs `uncond`. The starting
  noise is drawn from `key` unless `x_T` is given."""
  model_fn = unet_model_fn(unet, params, on_call)
  if guidance_scale != 1.0:
    if uncond is None:
      raise ValueError("guidance_scale != 1 needs unconditional inputs (a model trained "
                       "with conditioning.dropout > 0).")
    guided = guidance.cfg_model_fn(model_fn, guidance_scale, guidance_rescale)
    fn = lambda x, t: guided(x, t, cond, uncond)
  else:
    fn = lambda x, t: model_fn(x, t, cond)
  k_init, k_sample = jax.random.split(key)
  if x_T is None:
    x_T = jax.random.normal(k_init, shape, jnp.float32)
  elif tuple(x_T.shape) != tuple(shape):
    raise ValueError(f"x_T has shape {x_T.shape}; expected {tuple(shape)}.")
  return samplers.sample(fn, schedule, x_T, key=k_sample, sampler=sampler, steps=steps,
                         prediction=prediction, eta=eta)
