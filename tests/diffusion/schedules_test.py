"""Schedule identities and the parameterisations of the forward process."""

import functools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.diffusion import process
from ldm_jax.diffusion import schedules

DISCRETE = {"linear": schedules.linear(), "sqrt_linear": schedules.sqrt_linear(),
            "stable_diffusion": schedules.stable_diffusion(), "cosine": schedules.cosine()}


@pytest.mark.parametrize("name", list(DISCRETE))
def test_discrete_identities(name):
  s = DISCRETE[name]
  t = jnp.arange(s.num_timesteps)
  assert s.alphas_cumprod.dtype == jnp.float32
  np.testing.assert_allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, 1.0, atol=1e-6)
  assert bool(jnp.all(jnp.diff(s.logsnr(t)) < 0))  # Strictly more noise as t grows.


def test_continuous_identities_and_shift():
  t = jnp.linspace(0.0, 1.0, 101)
  base = schedules.logsnr_cosine(t)
  assert bool(jnp.all(jnp.diff(base) < 0))
  np.testing.assert_allclose([base[0], base[-1]], [15.0, -15.0], atol=1e-3)
  alpha, sigma = schedules.alpha_sigma(base)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
  shifted = schedules.logsnr_shifted_cosine(t, image_size=256, base_size=64)
  np.testing.assert_allclose(shifted - base, 2 * math.log(64 / 256), atol=1e-5)
  mixed = schedules.logsnr_interpolated_cosine(t, image_size=512, low_size=32, high_size=256)
  np.testing.assert_allclose(mixed[0], base[0] + 2 * math.log(256 / 512), atol=1e-4)
  np.testing.assert_allclose(mixed[-1], base[-1] + 2 * math.log(32 / 512), atol=1e-4)


def test_discretize_is_the_continuous_schedule_at_steps():
  fn = functools.partial(schedules.logsnr_shifted_cosine, image_size=256, base_size=64)
  s = schedules.discretize(fn, 100)
  t = jnp.arange(100)
  np.testing.assert_allclose(s.logsnr(t), fn((t + 1) / 100), atol=2e-4)
  np.testing.assert_allclose(s.alphas_cumprod + s.sigmas_squared, 1.0, atol=1e-6)
  assert bool(jnp.all(jnp.diff(s.logsnr(t)) < 0))
  with pytest.raises(ValueError, match="finite logSNRs"):
    schedules.discretize(lambda t: -jnp.log(t - t), 10)


@pytest.mark.parametrize("prediction", process.PREDICTIONS)
def test_parameterisations_invert_each_other(prediction):
  rng = np.random.default_rng(0)
  x0, eps = rng.standard_normal((2, 3, 4, 4, 1)).astype(np.float32)
  logsnr = jnp.asarray([-3.0, 0.5, 4.0])
  alpha, sigma = (process.broadcast(v, x0) for v in schedules.alpha_sigma(logsnr))
  x = process.q_sample(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
  out = process.target(prediction=prediction, x0=x0, eps=eps, alpha=alpha, sigma=sigma)
  kw = dict(prediction=prediction, x=x, out=out, alpha=alpha, sigma=sigma)
  np.testing.assert_allclose(process.x0_from(**kw), x0, atol=2e-4)
  np.testing.assert_allclose(process.eps_from(**kw), eps, atol=2e-4)
  with pytest.raises(ValueError, match="prediction='score'"):
    process.x0_from(**{**kw, "prediction": "score"})
