"""Deterministic samplers with the closed-form optimal denoiser of Gaussian data.

For x0 ~ N(mu, s^2) per dimension, E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2)
(x_t - alpha mu): plugged in as model_fn (eps-prediction), the probability-flow samplers must
turn the marginal at their first timestep into N(mu, s^2). The exact probability-flow map is
linear per dimension, x0 = mu + s (x_T - alpha mu) / sqrt(alpha^2 s^2 + sigma^2), so each
sample's discretization error is measured too, free of sampling noise.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ldm_jax.diffusion import samplers
from ldm_jax.diffusion import schedule_config
from ldm_jax.diffusion import schedules

NUM_SAMPLES, DIMS = 4096, 8
MU = np.linspace(-1.0, 2.0, DIMS).astype(np.float32)
STD = np.linspace(0.3, 1.5, DIMS).astype(np.float32)
SCHEDULE = schedules.stable_diffusion()


def oracle(x, t, schedule=SCHEDULE):
  a = schedule.alphas_cumprod[t][:, None]
  alpha, sigma = jnp.sqrt(a), jnp.sqrt(schedule.sigmas_squared[t][:, None])
  x0 = MU + alpha * STD**2 / (a * STD**2 + sigma**2) * (x - alpha * MU)
  return (x - alpha * x0) / sigma


def _first_timestep(sampler, steps, num_timesteps=1000):
  if sampler == "dpm_solver++":
    return int(samplers.linspace_timesteps(num_timesteps, steps)[0])
  return int(samplers.leading_timesteps(num_timesteps, steps)[0])


def _errors(sampler, steps, schedule=SCHEDULE):
  """max |mean - mu|, max |std - s| over dimensions; max |x0 - exact map| over samples."""
  t0 = _first_timestep(sampler, steps, schedule.num_timesteps)
  a = float(schedule.alphas_cumprod[t0])
  noise = np.random.default_rng(0).standard_normal((NUM_SAMPLES, DIMS)).astype(np.float32)
  x_T = np.sqrt(a) * MU + np.sqrt(a * STD**2 + 1.0 - a) * noise  # The exact marginal at t0.
  model_fn = functools.partial(oracle, schedule=schedule)
  run = jax.jit(lambda x: samplers.sample(model_fn, schedule, x, sampler=sampler, steps=steps,
                                          key=jax.random.key(1)))
  x0 = np.asarray(run(x_T))
  exact = MU + STD * (x_T - np.sqrt(a) * MU) / np.sqrt(a * STD**2 + 1.0 - a)
  return (float(np.abs(x0.mean(0) - MU).max()), float(np.abs(x0.std(0) - STD).max()),
          float(np.abs(x0 - exact).max()))


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddim", "plms", "dpm_solver++"])
def test_gaussian_oracle(sampler):
  errors = {steps: _errors(sampler, steps) for steps in (10, 50, 250)}
  print(f"{sampler} Gaussian oracle (mean err, std err, map err) by steps: " + ", ".join(
      f"{k}: ({', '.join(f'{v:.4f}' for v in e)})" for k, e in errors.items()))
  mean_error, std_error, _ = errors[250]
  assert mean_error < 3 * STD.max() / np.sqrt(NUM_SAMPLES)  # 3 standard errors.
  assert std_error < 3 * STD.max() / np.sqrt(2 * NUM_SAMPLES)
  # Discretization error falls with more steps (PLMS, fourth order, reaches its float32
  # floor of ~2e-3 by 50 steps).
  map_errors = [errors[steps][2] for steps in (10, 50, 250)]
  assert map_errors[0] > map_errors[1] and map_errors[0] > map_errors[2], map_errors
  assert map_errors[2] < 0.05, map_errors


@pytest.mark.parametrize("sampler,steps", [("ddim", 250), ("dpm_solver++", 50)])
def test_gaussian_oracle_on_simple_diffusion_schedule(sampler, steps):
  """The shifted cosine (128 px, base 64), discretized to 1000 steps. (Its logSNR reaches
  -16.4, so first-order DDIM needs more steps than on SD's schedule: map error 0.17 at 50.)"""
  schedule = schedules.discretize(
      functools.partial(schedules.logsnr_shifted_cosine, image_size=128, base_size=64))
  mean_error, std_error, map_error = _errors(sampler, steps, schedule)
  assert mean_error < 3 * STD.max() / np.sqrt(NUM_SAMPLES)
  assert std_error < 3 * STD.max() / np.sqrt(2 * NUM_SAMPLES)
  assert map_error < 0.05


@pytest.mark.parametrize("sampler,steps", [("ddim", 300), ("ddpm", 300), ("dpm_solver++", 50)])
def test_gaussian_oracle_on_a_continuous_schedules_own_grid(sampler, steps):
  """simple diffusion's 128 px schedule sampled on `sampling_table(steps)`: its logSNR at
  t = i / steps, no 1000-step table. DDPM adds noise, so only its moments are checked."""
  schedule = schedule_config.from_config(ml_collections.ConfigDict(dict(
      schedule="logsnr_shifted_cosine", num_timesteps=1000, shift_size=128,
      time_input="logsnr")))
  table = schedule.sampling_table(steps)
  assert table.num_timesteps == steps
  np.testing.assert_allclose(table.logsnr(jnp.arange(steps)),
                             schedule.logsnr_fn((np.arange(steps) + 1) / steps), atol=2e-4)
  mean_error, std_error, map_error = _errors(sampler, steps, table)
  print(f"{sampler} {steps} steps on the continuous grid: mean err {mean_error:.4f}, std err "
        f"{std_error:.4f}, map err {map_error:.4f}")
  assert mean_error < 3 * STD.max() / np.sqrt(NUM_SAMPLES)
  assert std_error < 3 * STD.max() / np.sqrt(2 * NUM_SAMPLES)
  if sampler != "ddpm":
    assert map_error < 0.05


@pytest.mark.parametrize("sampler,steps", [("ddim", 250), ("plms", 50), ("dpm_solver++", 100)])
def test_inpainting_keeps_the_known_region_and_samples_the_rest(sampler, steps):
  """Dimensions are independent here, so the unknown half must still follow N(mu, s^2)."""
  rng = np.random.default_rng(1)
  known = (MU + STD * rng.standard_normal((NUM_SAMPLES, DIMS))).astype(np.float32)
  mask = (np.arange(DIMS) < DIMS // 2).astype(np.float32)
  a = float(SCHEDULE.alphas_cumprod[_first_timestep(sampler, steps)])
  x_T = (np.sqrt(a) * MU + np.sqrt(a * STD**2 + 1.0 - a)
         * rng.standard_normal((NUM_SAMPLES, DIMS))).astype(np.float32)
  run = jax.jit(lambda x, key: samplers.sample(
      oracle, SCHEDULE, x, key=key, sampler=sampler, steps=steps, inpaint=(known, mask)))
  x0 = np.asarray(run(x_T, jax.random.key(0)))
  np.testing.assert_array_equal(x0[:, :DIMS // 2], known[:, :DIMS // 2])
  free = slice(DIMS // 2, DIMS)
  assert np.abs(x0[:, free].mean(0) - MU[free]).max() < 3 * STD.max() / np.sqrt(NUM_SAMPLES)
  assert np.abs(x0[:, free].std(0) - STD[free]).max() < 0.05


def test_inpainting_input_errors():
  x = np.zeros((2, DIMS), np.float32)
  with pytest.raises(ValueError, match="pass a PRNG key"):
    samplers.sample(oracle, SCHEDULE, x, inpaint=(x, np.ones(DIMS)))
  with pytest.raises(ValueError, match=r"known image has shape \(3, 8\)"):
    samplers.sample(oracle, SCHEDULE, x, key=jax.random.key(0),
                    inpaint=(np.zeros((3, DIMS)), np.ones(DIMS)))
  with pytest.raises(ValueError, match=r"mask shape \(5,\) does not broadcast"):
    samplers.sample(oracle, SCHEDULE, x, key=jax.random.key(0), inpaint=(x, np.ones(5)))
