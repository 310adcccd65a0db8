"""Every schedule reachable from a `diffusion` config block, discrete and continuous."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from ldm_jax.diffusion import schedule_config
from ldm_jax.diffusion import schedules


def _block(**overrides):
  block = common.diffusion_config()
  block.update(overrides)
  return block


@pytest.mark.parametrize("name, expected", [
    ("linear", schedules.linear(1000, 0.0015, 0.0195)),
    ("sqrt_linear", schedules.sqrt_linear(1000, 0.0015, 0.0195)),
    ("stable_diffusion", schedules.sqrt_linear(1000, 0.00085, 0.012)),
    ("cosine", schedules.cosine(1000)),
])
def test_discrete_schedules_are_the_tables(name, expected):
  s = schedule_config.from_config(_block(schedule=name))
  assert not s.continuous and s.num_timesteps == 1000
  np.testing.assert_array_equal(s.discrete.alphas_cumprod, expected.alphas_cumprod)
  t = jnp.asarray([0, 17, 999])
  assert s.draw_times(jax.random.key(0), 64).dtype == jnp.int32
  np.testing.assert_array_equal(s.network_time(t), t)
  np.testing.assert_array_equal(s.network_time_of_step(t), t)
  alpha, sigma = s.alpha_sigma(t)
  np.testing.assert_array_equal(alpha, jnp.sqrt(expected.alphas_cumprod[t]))
  np.testing.assert_array_equal(sigma, jnp.sqrt(expected.sigmas_squared[t]))


def test_zero_terminal_snr_applies_to_discrete_schedules():
  s = schedule_config.from_config(_block(zero_terminal_snr=True))
  assert float(s.discrete.alphas_cumprod[-1]) == 0.0
  with pytest.raises(ValueError, match="zero_terminal_snr.*continuous"):
    schedule_config.from_config(_block(schedule="logsnr_cosine", zero_terminal_snr=True))


@pytest.mark.parametrize("name, size, logsnr_64", [
    # The cosine logSNR -2 log tan(pi t / 2) at t = 0.5 is 0; the shift adds 2 log(64 / d).
    ("logsnr_cosine", 32, 0.0),
    ("logsnr_shifted_cosine", 32, 2 * math.log(64 / 32)),
    ("logsnr_shifted_cosine", 128, 2 * math.log(64 / 128)),
    # Interpolated at t = 0.5: the mean of the shifts to 32 and to 256.
    ("logsnr_interpolated_cosine", 64, 0.5 * (2 * math.log(32 / 64) + 2 * math.log(256 / 64))),
])
def test_continuous_schedules_in_training_and_sampling(name, size, logsnr_64):
  s = schedule_config.from_config(_block(schedule=name, num_timesteps=100), image_size=size)
  assert s.continuous and s.num_timesteps == 100
  # The middle of the range, within the truncation's tiny stretch of t.
  np.testing.assert_allclose(float(s.logsnr_fn(0.5)), logsnr_64, atol=2e-3)
  t = s.draw_times(jax.random.key(0), 4096)
  assert t.dtype == jnp.float32 and 0.0 <= float(t.min()) and float(t.max()) < 1.0
  assert abs(float(t.mean()) - 0.5) < 0.02
  alpha, sigma = s.alpha_sigma(t)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
  np.testing.assert_allclose(s.network_time(t), t * 100, rtol=1e-6)
  # The samplers' step i is t = (i + 1) / T: same noise level and network input.
  steps = jnp.asarray([0, 49, 99])
  t_of_step = (np.asarray(steps, np.float64) + 1) / 100
  logsnr = np.asarray(s.logsnr_fn(t_of_step), np.float64)
  np.testing.assert_allclose(np.asarray(s.discrete.alphas_cumprod[steps], np.float64),
                             1 / (1 + np.exp(-logsnr)), rtol=1e-6)
  np.testing.assert_allclose(s.network_time_of_step(steps), t_of_step * 100, rtol=1e-6)
  np.testing.assert_allclose(s.even_times(4), [0.125, 0.375, 0.625, 0.875])


def test_logsnr_time_input_and_explicit_shift_size():
  s = schedule_config.from_config(_block(schedule="logsnr_shifted_cosine", time_input="logsnr",
                                         shift_size=256), image_size=8)
  t = jnp.asarray([0.25, 0.5])
  np.testing.assert_allclose(s.network_time(t), s.logsnr_fn(t))
  np.testing.assert_allclose(s.logsnr_fn(0.5), 2 * math.log(64 / 256), atol=2e-3)


@pytest.mark.parametrize("overrides, image_size, message", [
    (dict(schedule="quadratic"), None, "diffusion.schedule='quadratic': expected one of"),
    (dict(schedule="logsnr_shifted_cosine"), None, "set diffusion.shift_size"),
    (dict(schedule="logsnr_cosine", time_input="sigma"), None, "diffusion.time_input='sigma'"),
    (dict(schedule="logsnr_cosine", logsnr_min=5.0, logsnr_max=-5.0), None,
     "logsnr_min=5.0 must be below"),
])
def test_bad_blocks_are_refused_by_key(overrides, image_size, message):
  with pytest.raises(ValueError, match=message):
    schedule_config.from_config(_block(**overrides), image_size=image_size)


def test_a_block_saved_before_the_continuous_fields_still_reads():
  old = ml_collections.ConfigDict(dict(schedule="sqrt_linear", num_timesteps=1000,
                                       linear_start=0.0015, linear_end=0.0195))
  s = schedule_config.from_config(old)
  np.testing.assert_array_equal(s.discrete.alphas_cumprod,
                                schedules.sqrt_linear(1000, 0.0015, 0.0195).alphas_cumprod)
