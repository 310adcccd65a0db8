"""The noise schedule a config's `diffusion` block names, for training and for the samplers.

    schedule = schedule_config.from_config(config.diffusion, image_size=latent_side)

Discrete schedules (DDPM/LDM: integer t in [0, T)):
  'linear'             DDPM's betas (`linear_start`, `linear_end`);
  'sqrt_linear'        CompVis' and Stable Diffusion's 'linear' (sqrt-spaced betas);
  'stable_diffusion'   sqrt_linear with Stable Diffusion's betas (0.00085, 0.012);
  'cosine'             Nichol & Dhariwal;
  any of them with `zero_terminal_snr=True` (Lin et al.).
Continuous schedules (t in [0, 1] -> logSNR; training draws t ~ U(0, 1)):
  'logsnr_cosine'               the cosine logSNR truncated to [logsnr_min, logsnr_max];
  'logsnr_shifted_cosine'       simple diffusion: shifted by 2 log(shift_base / size);
  'logsnr_interpolated_cosine'  simple diffusion: from the shift of interpolate_sizes[0]
                                (t = 1) to that of interpolate_sizes[1] (t = 0).
`size` is `shift_size` when set, else the side of what is diffused (the caller's
`image_size`: the latent side for an LDM, the image side in pixel space).

The samplers run on a `DiscreteSchedule`: `sampling_table(steps)`. A discrete schedule gives
its T-step table (the samplers pick `steps` of them); a continuous one gives
`schedules.discretize(logsnr_fn, steps)`, its logSNR at t = i / steps, i = steps .. 1, with
sampling ending at t = 0: any number of steps, no fixed grid. The network's time input
(`time_input`): the step index for discrete schedules; for continuous ones 't' (t * T, the
range of a step index, T = num_timesteps) or 'logsnr'; `network_time_of_step(i, steps)`
gives it at the samplers' step i.
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.diffusion import schedules

DISCRETE = ("linear", "sqrt_linear", "stable_diffusion", "cosine")
CONTINUOUS = ("logsnr_cosine", "logsnr_shifted_cosine", "logsnr_interpolated_cosine")
TIME_INPUTS = ("t", "logsnr")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A configured schedule: the samplers' table and, when continuous, its logSNR function."""
  name: str
  discrete: schedules.DiscreteSchedule
  logsnr_fn: Callable | None = None  # t in [0, 1] -> logSNR; None: discrete.
  time_input: str = "index"  # 'index' (discrete), 't' or 'logsnr'.

  @property
  def continuous(self) -> bool:
    return self.logsnr_fn is not None

  @property
  def num_timesteps(self) -> int:
    return self.discrete.num_timesteps

  def draw_times(self, key, batch: int):
    """Training times: t ~ U{0..T-1} (int32), or U(0, 1) (float32) when continuous."""
    if self.continuous:
      return jax.random.uniform(key, (batch,), jnp.float32)
    return jax.random.randint(key, (batch,), 0, self.num_timesteps)

  def even_times(self, batch: int):
    """Times spread evenly over the range (evaluation: comparable across steps)."""
    if self.continuous:
      return (jnp.arange(batch, dtype=jnp.float32) + 0.5) / batch
    return ((jnp.arange(batch) + 0.5) * self.num_timesteps / batch).astype(jnp.int32)

  def alpha_sigma(self, t):
    """(alpha_t, sigma_t), shape [B], at training times `t`."""
    if self.continuous:
      return schedules.alpha_sigma(self.logsnr_fn(t))
    return (jnp.sqrt(self.discrete.alphas_cumprod[t]),
            jnp.sqrt(self.discrete.sigmas_squared[t]))

  def network_time(self, t):
    """The network's time input at training times `t`."""
    if not self.continuous:
      return t
    if self.time_input == "logsnr":
      return self.logsnr_fn(t)
    return jnp.asarray(t, jnp.float32) * self.num_timesteps

  def sampling_table(self, steps: int) -> schedules.DiscreteSchedule:
    """The table the samplers walk for `steps` steps (see the module docstring)."""
    if not self.continuous:
      return self.discrete
    if steps < 1:
      raise ValueError(f"steps={steps}: expected >= 1.")
    return schedules.discretize(lambda t: np.asarray(self.logsnr_fn(t), np.float64), steps)

  def network_time_of_step(self, step, steps: int | None = None):
    """The network's time input at the samplers' integer step i of `sampling_table(steps)`
    (for a continuous schedule t = (i + 1) / steps; steps None: num_timesteps)."""
    if not self.continuous:
      return step
    steps = self.num_timesteps if steps is None else steps
    return self.network_time((jnp.asarray(step, jnp.float32) + 1.0) / steps)


def _get(block, key, default):
  value = block.get(key, default) if hasattr(block, "get") else getattr(block, key, default)
  return default if value is None else value


def from_config(block, *, image_size: int | None = None) -> Schedule:
  """The `Schedule` of a `diffusion` config block (see the module docstring)."""
  name, steps = block.schedule, int(block.num_timesteps)
  if name in DISCRETE:
    if name == "linear":
      table = schedules.linear(steps, block.linear_start, block.linear_end)
    elif name == "sqrt_linear":
      table = schedules.sqrt_linear(steps, block.linear_start, block.linear_end)
    elif name == "stable_diffusion":
      table = schedules.stable_diffusion(steps)
    else:
      table = schedules.cosine(steps)
    if _get(block, "zero_terminal_snr", False):
      table = schedules.rescale_zero_terminal_snr(table)
    return Schedule(name, table)
  if name not in CONTINUOUS:
    raise ValueError(f"diffusion.schedule={name!r}: expected one of {DISCRETE + CONTINUOUS} "
                     f"('linear' is DDPM's betas, 'sqrt_linear' CompVis' and Stable "
                     f"Diffusion's; the logsnr_* ones are continuous-time).")
  if _get(block, "zero_terminal_snr", False):
    raise ValueError(f"diffusion.zero_terminal_snr rescales a discrete schedule; "
                     f"{name!r} is continuous (its logSNR ends at logsnr_min).")
  time_input = _get(block, "time_input", "t")
  if time_input not in TIME_INPUTS:
    raise ValueError(f"diffusion.time_input={time_input!r}: expected one of {TIME_INPUTS} "
                     f"for the continuous schedule {name!r}.")
  bounds = dict(logsnr_min=float(_get(block, "logsnr_min", -15.0)),
                logsnr_max=float(_get(block, "logsnr_max", 15.0)))
  if not bounds["logsnr_min"] < bounds["logsnr_max"]:
    raise ValueError(f"diffusion.logsnr_min={bounds['logsnr_min']} must be below "
                     f"diffusion.logsnr_max={bounds['logsnr_max']}.")
  size = _get(block, "shift_size", image_size)
  if name == "logsnr_cosine":
    fn = functools.partial(schedules.logsnr_cosine, **bounds)
  elif size is None or int(size) < 1:
    raise ValueError(f"diffusion.schedule={name!r} shifts by the resolution: set "
                     f"diffusion.shift_size (the side of what is diffused).")
  elif name == "logsnr_shifted_cosine":
    fn = functools.partial(schedules.logsnr_shifted_cosine, image_size=int(size),
                           base_size=int(_get(block, "shift_base", 64)), **bounds)
  else:
    low, high = _get(block, "interpolate_sizes", (32, 256))
    fn = functools.partial(schedules.logsnr_interpolated_cosine, image_size=int(size),
                           low_size=int(low), high_size=int(high), **bounds)
  table = schedules.discretize(lambda t: np.asarray(fn(t), np.float64), steps)
  return Schedule(name, table, fn, time_input)

