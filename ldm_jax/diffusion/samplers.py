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


def linspace_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """Descending int32 timesteps round(linspace(0, T - 1, N + 1))[::-1][:-1] (DPM-Solver's);
  every step, T - 1 .. 0, when N = T (the rounded grid would repeat steps)."""
  if not 0 < num_steps <= num_timesteps:
    raise ValueError(f"steps={num_steps}: expected 1 .. {num_timesteps} (the schedule's T).")
  if num_steps == num_timesteps:
    return np.arange(num_timesteps, dtype=np.int32)[::-1].copy()
  return np.linspace(0, num_timesteps - 1, num_steps + 1).round()[::-1][:-1].astype(np.int32)


# PLMS: Adams-Bashforth weights for 1, 2, 3 and 4 available eps (newest first).
_PLMS_WEIGHTS = np.array([[1.0, 0.0, 0.0, 0.0], [1.5, -0.5, 0.0, 0.0],
                          [23 / 12, -16 / 12, 5 / 12, 0.0],
                          [55 / 24, -59 / 24, 37 / 24, -9 / 24]], np.float32)


def _tables(schedule: DiscreteSchedule, t, x, final_alpha_cumprod: float = 1.0):
  """(alpha^2, sigma^2) at t, shaped to multiply x; past the last step (t < 0) alpha^2 is
  `final_alpha_cumprod`."""
  safe = jnp.clip(t, 0, schedule.num_timesteps - 1)
  valid = t >= 0
  a = jnp.where(valid, schedule.alphas_cumprod[safe], final_alpha_cumprod)
  s2 = jnp.where(valid, schedule.sigmas_squared[safe], 1.0 - final_alpha_cumprod)
  return process.broadcast(a, x), process.broadcast(s2, x)


def ddim_step(schedule: DiscreteSchedule, *, prediction: str, x, out, t, t_prev,
              eta: float = 0.0, noise=None, final_alpha_cumprod: float = 1.0):
  """One DDIM step t -> t_prev (Song et al.); eta = 1 is DDPM-like ancestral noise."""
  a_t, s2_t = _tables(schedule, t, x, final_alpha_cumprod)
  a_prev, s2_prev = _tables(schedule, t_prev, x, final_alpha_cumprod)
  alpha, sigma = jnp.sqrt(a_t), jnp.sqrt(s2_t)
  x0 = process.x0_from(prediction=prediction, x=x, out=out, alpha=alpha, sigma=sigma)
  eps = process.eps_from(prediction=prediction, x=x, out=out, alpha=alpha, sigma=sigma)
  variance = s2_prev / s2_t * (1.0 - a_t / a_prev)
  std = eta * jnp.sqrt(variance)
  x_prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(s2_prev - std**2) * eps
  if noise is not None:
    x_prev = x_prev + std * noise
  return x_prev, x0


def ddpm_step(schedule: DiscreteSchedule, *, prediction: str, x, out, t, t_prev,
              noise=None):
  """One ancestral step t -> t_prev with the posterior variance ('fixed_small')."""
  a_t, s2_t = _tables(schedule, t, x)
  a_prev, s2_prev = _tables(schedule, t_prev, x)
  x0 = process.x0_from(prediction=prediction, x=x, out=out, alpha=jnp.sqrt(a_t),
                       sigma=jnp.sqrt(s2_t))
  step_alpha = a_t / a_prev
  step_beta = 1.0 - step_alpha
  mean = (jnp.sqrt(a_prev) * step_beta / s2_t * x0
          + jnp.sqrt(step_alpha) * s2_prev / s2_t * x)
  if noise is not None:
    variance = jnp.maximum(s2_prev / s2_t * step_beta, 1e-20)
    last = process.broadcast(t_prev < 0, x)
    mean = mean + jnp.where(last, 0.0, jnp.sqrt(variance)) * noise
  return mean, x0


def plms_combine(outputs, count):
  """Linear multistep combination of the newest `count` (1..4) outputs, newest first."""
  weights = jnp.asarray(_PLMS_WEIGHTS)[jnp.clip(count, 1, 4) - 1]
  return jnp.tensordot(weights, outputs, axes=1)


def plms_update(schedule: DiscreteSchedule, *, prediction: str, x, out, t, t_prev,
                final_alpha_cumprod: float = 1.0):
  """The deterministic (DDIM) move t -> t_prev with a combined output; returns (x, x0).

  A combined v output is turned into eps at the current x (diffusers' PNDM does the same).
  """
  a_t, s2_t = _tables(schedule, t, x, final_alpha_cumprod)
  eps = process.eps_from(prediction=prediction, x=x, out=out, alpha=jnp.sqrt(a_t),
                         sigma=jnp.sqrt(s2_t))
  return ddim_step(schedule, prediction="eps", x=x, out=eps, t=t, t_prev=t_prev,
                   final_alpha_cumprod=final_alpha_cumprod)


def dpm_solver_pp_step(schedule: DiscreteSchedule, *, prediction: str, x, out, t, t_prev,
                       previous_x0=None, t_previous=None):
  """One DPM-Solver++ step t -> t_prev on the data prediction (Lu et al. 2022).

  First order without `previous_x0`; second order (multistep, midpoint) with the x0
  predicted at the step before, `t_previous`. t_prev < 0 means the end (sigma = 0).
  Returns (x_prev, x0).
  """
  def alpha_sigma_lambda(time):  # time < 0: the end, alpha = 1, sigma = 0.
    a, s2 = _tables(schedule, time, x)
    alpha, sigma = jnp.sqrt(a), jnp.sqrt(s2)
    return alpha, sigma, jnp.log(alpha) - jnp.log(sigma)

  alpha_s, sigma_s, lambda_s = alpha_sigma_lambda(t)
  alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(t_prev)
  x0 = process.x0_from(prediction=prediction, x=x, out=out, alpha=alpha_s, sigma=sigma_s)
  h = lambda_t - lambda_s
  decay = jnp.expm1(-h)  # exp(-h) - 1; -1 at the end (h = inf).
  x_prev = sigma_t / sigma_s * x - alpha_t * decay * x0
  if previous_x0 is not None:
    _, _, lambda_prev = alpha_sigma_lambda(t_previous)
    r = (lambda_s - lambda_prev) / h
    x_prev = x_prev - 0.5 * alpha_t * decay * (x0 - previous_x0) / r
  return x_prev, x0


SAMPLERS = ("ddim", "ddpm", "plms", "dpm_solver++")


def _call(model_fn, x, t):
  return model_fn(x, jnp.full(x.shape[:1], t, jnp.int32))


def _identity_pre_step(x, t, index):
  del t, index
  return x


def _ancestral_loop(model_fn, schedule, x, pairs, keys, *, sampler, prediction, eta,
                    final_alpha_cumprod, stochastic, pre_step):
  def body(x, inputs):
    (t, t_prev), step_key, index = inputs
    x = pre_step(x, t, index)
    out = _call(model_fn, x, t)
    noise = jax.random.normal(step_key, x.shape, x.dtype) if stochastic else None
    if sampler == "ddim":
      x, x0 = ddim_step(schedule, prediction=prediction, x=x, out=out, t=t, t_prev=t_prev,
                        eta=eta, noise=noise, final_alpha_cumprod=final_alpha_cumprod)
    else:
      x, x0 = ddpm_step(schedule, prediction=prediction, x=x, out=out, t=t, t_prev=t_prev,
                        noise=noise)
    return x, (x, x0)
  return jax.lax.scan(body, x, (pairs, keys, jnp.arange(pairs.shape[0])))


def _plms_loop(model_fn, schedule, x, pairs, *, prediction, final_alpha_cumprod, pre_step):
  """Pseudo linear multistep (Liu et al. 2022): an improved-Euler first step, then
  Adams-Bashforth combinations of up to four outputs."""
  update = lambda x, out, t, t_prev: plms_update(
      schedule, prediction=prediction, x=x, out=out, t=t, t_prev=t_prev,
      final_alpha_cumprod=final_alpha_cumprod)
  t0, t0_prev = pairs[0]
  x = pre_step(x, t0, 0)
  first = _call(model_fn, x, t0)
  if pairs.shape[0] == 1:
    x, x0 = update(x, first, t0, t0_prev)
    return x, (x[None], x0[None])
  x_euler, _ = update(x, first, t0, t0_prev)
  x, x0 = update(x, (first + _call(model_fn, x_euler, t0_prev)) / 2, t0, t0_prev)
  history = jnp.stack([first] + [jnp.zeros_like(first)] * 2)

  def body(carry, inputs):
    x, history, count = carry
    (t, t_prev), index = inputs
    x = pre_step(x, t, index)
    out = _call(model_fn, x, t)
    outputs = jnp.concatenate([out[None], history])
    x, x0 = update(x, plms_combine(outputs, count + 1), t, t_prev)
    return (x, outputs[:3], count + 1), (x, x0)

  (x_last, _, _), (xs, x0s) = jax.lax.scan(body, (x, history, jnp.int32(1)),
                                           (pairs[1:], jnp.arange(1, pairs.shape[0])))
  return x_last, (jnp.concatenate([x[None], xs]), jnp.concatenate([x0[None], x0s]))


def _dpm_solver_pp_loop(model_fn, schedule, x, timesteps, *, prediction, pre_step):
  """DPM-Solver++(2M): first order on the first and last steps, second order between."""
  t_next = jnp.concatenate([timesteps[1:], jnp.array([-1], jnp.int32)])
  def step(x, t, t_prev, index, **kw):
    x = pre_step(x, t, index)
    return dpm_solver_pp_step(schedule, prediction=prediction, x=x,
                              out=_call(model_fn, x, t), t=t, t_prev=t_prev, **kw)

  count = timesteps.shape[0]
  x, x0 = step(x, timesteps[0], t_next[0], 0)
  xs, x0s = [x], [x0]
  if timesteps.shape[0] > 2:
    def body(carry, inputs):
      x, previous_x0, t_previous = carry
      t, t_prev, index = inputs
      x, x0 = step(x, t, t_prev, index, previous_x0=previous_x0, t_previous=t_previous)
      return (x, x0, t), (x, x0)
    (x, x0, _), (mid_x, mid_x0) = jax.lax.scan(
        body, (x, x0, timesteps[0]), (timesteps[1:-1], t_next[1:-1], jnp.arange(1, count - 1)))
    xs.append(mid_x)
    x0s.append(mid_x0)
  if timesteps.shape[0] > 1:
    x, x0 = step(x, timesteps[-1], t_next[-1], count - 1)
    xs.append(x[None])
    x0s.append(x0[None])
  stack = lambda parts: jnp.concatenate([parts[0][None]] + parts[1:])
  return x, (stack(xs), stack(x0s))


def sample(model_fn: ModelFn, schedule: DiscreteSchedule, x_T, *, key=None,
           sampler: str = "ddim", steps: int = 50, prediction: str = "eps",
           eta: float = 0.0, timestep_offset: int = 0, final_alpha_cumprod: float = 1.0,
           inpaint=None, return_intermediates: bool = False):
  """Runs `sampler` from x_T in `steps` steps; jit-able, the steps run in `lax.scan`.

  (model_fn is traced once for ddpm/ddim; up to three times for plms and dpm_solver++,
  whose first and last steps sit outside the scan.)

  Samplers: 'ddim' (eta), 'ddpm' (ancestral), 'plms' (steps + 1 model calls) on diffusers'
  'leading' timesteps shifted by `timestep_offset`; 'dpm_solver++' (2M) on 'linspace'
  timesteps. `final_alpha_cumprod` is alpha^2 past the last step for ddim/plms (1.0, or
  alphas_cumprod[0] as Stable Diffusion). With `return_intermediates`, also returns
  {'x': x after each step, 'x0': the x0 prediction of each step} ([steps, ...] each).
  `key` is needed whenever noise is added (ddpm, ddim with eta > 0, or inpainting).

  `inpaint=(x0_known, mask)` (mask 1 where x0_known is kept, broadcastable to x) blends the
  known region, re-noised to the current step's level, into x before every step, and puts
  x0_known back at the end: inpainting with an unconditional model.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler={sampler!r}: expected one of {SAMPLERS}.")
  if prediction not in process.PREDICTIONS:
    raise ValueError(f"prediction={prediction!r}: expected one of {process.PREDICTIONS}.")
  stochastic = sampler == "ddpm" or (sampler == "ddim" and eta > 0)
  if (stochastic or inpaint is not None) and key is None:
    raise ValueError(f"sampler={sampler!r} with eta={eta}"
                     f"{' and inpainting' if inpaint is not None else ''} adds noise: pass "
                     f"a PRNG key.")
  pre_step = _identity_pre_step
  if inpaint is not None:
    known, mask = (jnp.asarray(v, x_T.dtype) for v in inpaint)
    if known.shape != x_T.shape:
      raise ValueError(f"inpaint: the known image has shape {known.shape}; x_T has "
                       f"{x_T.shape}.")
    try:
      jnp.broadcast_shapes(mask.shape, x_T.shape)
    except ValueError as e:
      raise ValueError(f"inpaint: mask shape {mask.shape} does not broadcast to x_T's "
                       f"{x_T.shape}.") from e
    blend_key, key = jax.random.split(key)

    def pre_step(x, t, index):
      noise = jax.random.normal(jax.random.fold_in(blend_key, index), x.shape, x.dtype)
      safe = jnp.clip(t, 0, schedule.num_timesteps - 1)
      noisy = (jnp.sqrt(schedule.alphas_cumprod[safe]) * known
               + jnp.sqrt(schedule.sigmas_squared[safe]) * noise)
      return mask * noisy + (1.0 - mask) * x
  if sampler == "dpm_solver++":
    timesteps = jnp.asarray(linspace_timesteps(schedule.num_timesteps, steps))
    x, (xs, x0s) = _dpm_solver_pp_loop(model_fn, schedule, x_T, timesteps,
                                       prediction=prediction, pre_step=pre_step)
  else:
    timesteps = leading_timesteps(schedule.num_timesteps, steps, timestep_offset)
    ratio = schedule.num_timesteps // steps
    pairs = jnp.asarray(np.stack([timesteps, timesteps - ratio], axis=1))
    if sampler == "plms":
      x, (xs, x0s) = _plms_loop(model_fn, schedule, x_T, pairs, prediction=prediction,
                                final_alpha_cumprod=final_alpha_cumprod, pre_step=pre_step)
    else:
      keys = jax.random.split(key, steps) if stochastic else jnp.zeros((steps,), jnp.uint32)
      x, (xs, x0s) = _ancestral_loop(model_fn, schedule, x_T, pairs, keys, sampler=sampler,
                                     prediction=prediction, eta=eta,
                                     final_alpha_cumprod=final_alpha_cumprod,
                                     stochastic=stochastic, pre_step=pre_step)
  if inpaint is not None:
    x = mask * known + (1.0 - mask) * x
  return (x, {"x": xs, "x0": x0s}) if return_intermediates else x
