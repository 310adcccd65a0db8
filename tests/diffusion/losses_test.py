"""Loss targets and weightings."""

import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.diffusion import losses
from ldm_jax.diffusion import process
from ldm_jax.diffusion import schedules


def _batch():
  rng = np.random.default_rng(0)
  x0, eps = rng.standard_normal((2, 4, 8, 8, 3)).astype(np.float32)
  t = np.array([10, 400, 700, 990])
  s = schedules.stable_diffusion()
  return x0, eps, t, process.broadcast(s.alpha(t), x0), process.broadcast(s.sigma(t), x0)


@pytest.mark.parity
def test_snr_matches_diffusers_compute_snr():
  diffusers = pytest.importorskip("diffusers")
  training_utils = pytest.importorskip("diffusers.training_utils")
  torch = pytest.importorskip("torch")
  scheduler = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                      beta_end=0.012)
  t = np.array([0, 10, 400, 700, 999])
  theirs = training_utils.compute_snr(scheduler, torch.from_numpy(t)).numpy()
  s = schedules.stable_diffusion()
  np.testing.assert_allclose(jnp.exp(s.logsnr(t)), theirs, rtol=1e-4)


@pytest.mark.parametrize("prediction", process.PREDICTIONS)
def test_perfect_prediction_has_zero_loss_and_min_snr_caps_weights(prediction):
  x0, eps, _, alpha, sigma = _batch()
  perfect = process.target(prediction=prediction, x0=x0, eps=eps, alpha=alpha, sigma=sigma)
  for weighting in losses.WEIGHTINGS:
    loss = losses.diffusion_loss(prediction=prediction, model_out=perfect, x0=x0, eps=eps,
                                 alpha=alpha, sigma=sigma, weighting=weighting)
    assert loss.shape == (4,) and float(jnp.abs(loss).max()) == 0.0
  snr = jnp.asarray([100.0, 5.0, 0.5])
  w = losses.loss_weight(snr=snr, prediction=prediction, weighting="min_snr", gamma=5.0)
  # In x0 units every weighting becomes min(SNR, gamma): eps error = SNR x0 error, and
  # v error = (SNR + 1) x0 error.
  to_x0 = {"eps": snr, "v": snr + 1.0, "x0": 1.0}[prediction]
  np.testing.assert_allclose(w * to_x0, jnp.minimum(snr, 5.0), rtol=1e-6)


def test_uniform_eps_loss_is_mse_and_errors():
  x0, eps, _, alpha, sigma = _batch()
  out = eps + 0.1
  loss = losses.diffusion_loss(prediction="eps", model_out=out, x0=x0, eps=eps, alpha=alpha,
                               sigma=sigma)
  np.testing.assert_allclose(loss, 0.01, rtol=1e-4)
  with pytest.raises(ValueError, match="weighting='p2'"):
    losses.loss_weight(snr=jnp.ones(2), prediction="eps", weighting="p2")
