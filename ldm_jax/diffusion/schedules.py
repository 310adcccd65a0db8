"""Noise schedules, discrete (T steps) and continuous (t in [0, 1]), as float32 tables.

Conventions, used throughout `ldm_jax.diffusion`:
* variance preserving: x_t = alpha_t x_0 + sigma_t eps with alpha_t^2 + sigma_t^2 = 1;
* discrete time is an integer t in [0, T) indexing `alphas_cumprod` (alpha_t^2), as in
  DDPM/LDM/diffusers; continuous time is a float t in [0, 1] mapped to a log-SNR;
* logSNR = log(alpha^2 / sigma^2).
"""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class DiscreteSchedule:
  """alphas_cumprod[t] = alpha_t^2 and sigmas_squared[t] = 1 - alpha_t^2, t = 0 .. T-1.

  Both float32 tables, each computed in float64: 1 - alphas_cumprod in float32 would lose
  digits where alpha_t ~ 1 (small t), which matters for log-SNR-based solvers.
  """
  alphas_cumprod: jax.Array
  sigmas_squared: jax.Array

  @classmethod
  def from_alphas_cumprod(cls, alphas_cumprod) -> "DiscreteSchedule":
    a = np.asarray(alphas_cumprod, np.float64)
    return cls(jnp.asarray(a, jnp.float32), jnp.asarray(1.0 - a, jnp.float32))

  @property
  def num_timesteps(self) -> int:
    return self.alphas_cumprod.shape[0]

  def alpha(self, t):
    return jnp.sqrt(self.alphas_cumprod[t])

  def sigma(self, t):
    return jnp.sqrt(self.sigmas_squared[t])

  def logsnr(self, t):
    return jnp.log(self.alphas_cumprod[t]) - jnp.log(self.sigmas_squared[t])


def _from_betas(betas: np.ndarray) -> DiscreteSchedule:
  return DiscreteSchedule.from_alphas_cumprod(np.cumprod(1.0 - np.asarray(betas, np.float64)))


def linear(num_timesteps: int = 1000, beta_start: float = 1e-4,
           beta_end: float = 0.02) -> DiscreteSchedule:
  """DDPM's betas, evenly spaced (diffusers' 'linear')."""
  return _from_betas(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64))


def sqrt_linear(num_timesteps: int = 1000, beta_start: float = 0.0015,
                beta_end: float = 0.0195) -> DiscreteSchedule:
  """CompVis' 'linear': sqrt(beta) evenly spaced (diffusers' 'scaled_linear').

  LDM uses (0.0015, 0.0195); Stable Diffusion (0.00085, 0.012): see `stable_diffusion()`.
  """
  return _from_betas(np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps,
                                 dtype=np.float64) ** 2)


def stable_diffusion(num_timesteps: int = 1000) -> DiscreteSchedule:
  return sqrt_linear(num_timesteps, 0.00085, 0.012)


def cosine(num_timesteps: int = 1000, s: float = 0.008,
           max_beta: float = 0.999) -> DiscreteSchedule:
  """Nichol & Dhariwal's cosine schedule (betas clipped at max_beta; 'squaredcos_cap_v2')."""
  f = lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2
  betas = [min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), max_beta)
           for i in range(num_timesteps)]
  return _from_betas(np.asarray(betas))


def rescale_zero_terminal_snr(schedule: DiscreteSchedule) -> DiscreteSchedule:
  """Lin et al. (2023): shift and scale sqrt(alphas_cumprod) so the last step has SNR 0."""
  root = np.sqrt(np.asarray(schedule.alphas_cumprod, np.float64))
  first, last = root[0], root[-1]
  root = (root - last) * first / (first - last)
  return DiscreteSchedule.from_alphas_cumprod(root**2)


# Continuous schedules: t in [0, 1] -> logSNR (float32).

def logsnr_cosine(t, logsnr_min: float = -15.0, logsnr_max: float = 15.0):
  """logSNR of the cosine schedule, -2 log tan(pi t / 2), truncated to [min, max]."""
  t_min = math.atan(math.exp(-0.5 * logsnr_max))
  t_max = math.atan(math.exp(-0.5 * logsnr_min))
  t = jnp.asarray(t, jnp.float32)
  return -2.0 * jnp.log(jnp.tan(t_min + t * (t_max - t_min)))


def logsnr_shifted_cosine(t, image_size: int, base_size: int = 64, **kwargs):
  """simple diffusion: the cosine logSNR shifted by 2 log(base_size / image_size)."""
  return logsnr_cosine(t, **kwargs) + 2.0 * math.log(base_size / image_size)


def logsnr_interpolated_cosine(t, image_size: int, low_size: int = 32,
                               high_size: int = 256, **kwargs):
  """simple diffusion's interpolated schedule, t logSNR_shift(low) + (1 - t) logSNR_shift(high).

  Generation starts (t = 1) on the strongly shifted low-resolution schedule and ends (t = 0)
  on the high-resolution one, as in the paper's appendix code and lucidrains'
  denoising-diffusion-pytorch. (k-diffusion's `rand_cosine_interpolated` interpolates the
  other way round and also shifts the truncation bounds.)
  """
  t = jnp.asarray(t, jnp.float32)
  high = logsnr_shifted_cosine(t, image_size, base_size=high_size, **kwargs)
  low = logsnr_shifted_cosine(t, image_size, base_size=low_size, **kwargs)
  return (1.0 - t) * high + t * low


def discretize(logsnr_fn, num_timesteps: int = 1000) -> DiscreteSchedule:
  """The discrete view of a continuous schedule: step i in [0, T) is t = (i + 1) / T.

  E.g. `discretize(functools.partial(logsnr_shifted_cosine, image_size=128))` runs simple
  diffusion's schedule through the DDPM/DDIM/PLMS/DPM-Solver++ samplers.
  """
  t = np.arange(1, num_timesteps + 1, dtype=np.float64) / num_timesteps
  with jax.ensure_compile_time_eval():  # A constant table, also when called under a trace.
    logsnr = np.asarray(logsnr_fn(t), np.float64)
  if logsnr.shape != (num_timesteps,) or not np.all(np.isfinite(logsnr)):
    raise ValueError(f"logsnr_fn must map t [{num_timesteps}] to finite logSNRs of the same "
                     f"shape; got shape {logsnr.shape}.")
  return DiscreteSchedule(jnp.asarray(1.0 / (1.0 + np.exp(-logsnr)), jnp.float32),
                          jnp.asarray(1.0 / (1.0 + np.exp(logsnr)), jnp.float32))


def alpha_sigma(logsnr):
  """(alpha, sigma) of a variance-preserving process with this logSNR."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))
