"""Loss targets and weightings."""

import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.diffusion import losses
from ldm_jax.diffusion import process
from ldm_jax.diffusion import schedules
from tests import references


def _batch():
  rng = np.random.default_rng(0)
  x0, eps = rng.standard_normal((2, 4, 8, 8, 3)).astype(np.float32)
  t = np.array([10, 400, 700, 990])
  s = schedules.stable_diffusion()
  return x0, eps, t, process.broadcast(s.alpha(t), x0), process.broadcast(s.sigma(t), x0)


@pytest.mark.parity
def test_snr_matches_diffusers_compute_snr():
  diffusers = references.require("diffusers")
  training_utils = references.require("diffusers.training_utils")
  torch = references.require("torch")
  scheduler = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                      beta_end=0.012)
  t = np.array([0, 10, 400, 700, 999])
  theirs = training_utils.compute_snr(scheduler, torch.from_numpy(t)).numpy()
  s = schedules.stable_diffusion()
  # diffusers' float32 table holds alpha_0 = 1 - beta_0 rounded (6e-8), which SNR_0 =
  # alpha_0 / (1 - alpha_0) turns into up to 7e-5 (measured 2.6e-5; ours keeps 1 - alpha in
  # its own float64-derived table).
  np.testing.assert_allclose(jnp.exp(s.logsnr(t)), theirs, rtol=3e-4)


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


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_eps_weighting_is_the_mse_in_eps_space(prediction):
  x0, eps, _, alpha, sigma = _batch()
  x = process.q_sample(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
  out = process.target(prediction=prediction, x0=x0, eps=eps, alpha=alpha, sigma=sigma)
  out = out + 0.3 * np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
  eps_hat = process.eps_from(prediction=prediction, x=x, out=out, alpha=alpha, sigma=sigma)
  expected = jnp.square(eps_hat - eps).mean(axis=(1, 2, 3))
  loss = losses.diffusion_loss(prediction=prediction, model_out=out, x0=x0, eps=eps,
                               alpha=alpha, sigma=sigma, weighting="eps")
  np.testing.assert_allclose(loss, expected, rtol=2e-3)


@pytest.mark.parity
def test_multiscale_loss_matches_torch_avg_pool():
  """sum_s (1/s) MSE(D_s[eps], D_s[eps_hat]) with D_s = torch's avg_pool2d, for a v model."""
  torch = references.require("torch")
  rng = np.random.default_rng(2)
  x0, eps = rng.standard_normal((2, 3, 32, 32, 3)).astype(np.float32)
  logsnr = jnp.asarray([-2.0, 0.0, 3.0])
  alpha, sigma = (process.broadcast(v, x0) for v in schedules.alpha_sigma(logsnr))
  x = process.q_sample(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
  v = process.target(prediction="v", x0=x0, eps=eps, alpha=alpha, sigma=sigma)
  v_hat = v + 0.5 * rng.standard_normal(v.shape).astype(np.float32)
  eps_hat = process.eps_from(prediction="v", x=x, out=v_hat, alpha=alpha, sigma=sigma)
  to_torch = lambda a: torch.from_numpy(np.array(a)).permute(0, 3, 1, 2)
  expected = 0.0
  for s in (8, 16, 32):
    pooled = [torch.nn.functional.avg_pool2d(to_torch(a), 32 // s) for a in (eps, eps_hat)]
    expected += ((pooled[0] - pooled[1]) ** 2).mean(dim=(1, 2, 3)).numpy() / s
  loss = losses.diffusion_loss(prediction="v", model_out=v_hat, x0=x0, eps=eps, alpha=alpha,
                               sigma=sigma, weighting="eps", multiscale_base=8)
  np.testing.assert_allclose(loss, expected, rtol=2e-3)


def test_multiscale_loss_of_white_noise_and_errors():
  # Pooling k x k white noise of unit variance leaves variance 1 / k^2, so the expected
  # loss is sum_s (s / d)^2 / s.
  error = np.random.default_rng(3).standard_normal((512, 16, 16, 2)).astype(np.float32)
  got = float(losses.multiscale_mse(jnp.asarray(error), base=4).mean())
  expected = sum((s / 16) ** 2 / s for s in (4, 8, 16))
  assert abs(got - expected) < 0.02 * expected
  with pytest.raises(ValueError, match="multiscale_base=12: the image size 16"):
    losses.multiscale_sizes(16, 12)
  with pytest.raises(ValueError, match=r"square NHWC images, got shape \(2, 16, 8, 1\)"):
    losses.multiscale_mse(jnp.zeros((2, 16, 8, 1)), base=4)


def test_vlb_weights_give_one_bound_for_one_model():
  """The same x0_hat costs the same L_t whichever space the error is measured in."""
  s = schedules.stable_diffusion()
  x0, eps, t, alpha, sigma = _batch()
  x = process.q_sample(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
  x0_hat = x0 + 0.2 * np.random.default_rng(4).standard_normal(x0.shape).astype(np.float32)
  eps_hat = process.eps_from(prediction="x0", x=x, out=x0_hat, alpha=alpha, sigma=sigma)
  bounds = []
  for prediction in process.PREDICTIONS:
    out = {"eps": eps_hat, "x0": x0_hat,
           "v": process.v_from(x0=x0_hat, eps=eps_hat, alpha=alpha, sigma=sigma)}[prediction]
    mse = losses.diffusion_loss(prediction=prediction, model_out=out, x0=x0, eps=eps,
                                alpha=alpha, sigma=sigma)
    bounds.append(losses.vlb_weights(s.alphas_cumprod, prediction)[t] * mse)
  np.testing.assert_allclose(bounds[1], bounds[0], rtol=5e-3)
  np.testing.assert_allclose(bounds[2], bounds[0], rtol=5e-3)


def _compvis_ddpm():
  """CompVis' ddpm module, importing it without pytorch_lightning, omegaconf or torchvision
  (only names it needs at import time; the functions used here do not touch them)."""
  torch = references.require("torch")
  references.require("ldm.modules.diffusionmodules.util")
  stubs = {"pytorch_lightning": dict(LightningModule=torch.nn.Module),
           "pytorch_lightning.utilities": {},
           "pytorch_lightning.utilities.distributed": dict(rank_zero_only=lambda f: f),
           "omegaconf": dict(ListConfig=list), "torchvision": {},
           "torchvision.utils": dict(make_grid=None)}
  with pytest.MonkeyPatch.context() as patch:
    for name, attrs in stubs.items():
      try:
        __import__(name)
      except ImportError:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        patch.setitem(sys.modules, name, module)
    from ldm.models.diffusion import ddpm  # pylint: disable=import-outside-toplevel
  return ddpm


@pytest.mark.parity
def test_ldm_objective_matches_compvis_p_losses():
  """CompVis LatentDiffusion.p_losses with learned logvar and an ELBO term, driven by a fixed
  model output, equals ldm_objective on our eps MSE with our vlb_weights."""
  torch = references.require("torch")
  from tests import torch_reference  # pylint: disable=import-outside-toplevel
  ddpm = _compvis_ddpm()
  ref = torch.nn.Module()
  ref.v_posterior, ref.parameterization, ref.loss_type = 0.0, "eps", "l2"
  ref.device = "cpu"
  # Its tables in float64: it computes them in numpy float64 but keeps float32 copies, and
  # lvlb_weights from those (1 - alphas_cumprod where alphas_cumprod ~ 1) were 4e-5 off.
  with torch_reference.float32_as_float64(ddpm):
    ddpm.DDPM.register_schedule(ref, linear_start=0.00085, linear_end=0.012)
  assert ref.lvlb_weights.dtype == torch.float64
  rng = np.random.default_rng(5)
  logvar = rng.normal(0.0, 0.5, 1000).astype(np.float32)
  ref.logvar = torch.from_numpy(logvar)
  ref.learn_logvar, ref.l_simple_weight, ref.original_elbo_weight = True, 0.7, 0.3
  for name in ("q_sample", "get_loss"):
    setattr(ref, name, types.MethodType(getattr(ddpm.DDPM, name), ref))
  x0, eps, out = rng.standard_normal((3, 4, 2, 8, 8)).astype(np.float32)
  ref.apply_model = lambda x, t, c: torch.from_numpy(out)
  t = np.array([0, 3, 500, 999])
  theirs, _ = ddpm.LatentDiffusion.p_losses(ref, torch.from_numpy(x0), None,
                                            torch.from_numpy(t), torch.from_numpy(eps))
  # The formula: ours from their float64 table, computed in float64, returned in float32
  # (rounding: 6e-8).
  vlb_table = losses.vlb_weights(ref.alphas_cumprod.numpy(), "eps")
  np.testing.assert_allclose(vlb_table, ref.lvlb_weights.numpy(), rtol=1e-6)
  s = schedules.stable_diffusion()
  # What training uses: ours from our float32 table, where recovering beta_t as
  # 1 - abar_t / abar_{t-1} turns its rounding (6e-8) into up to 5.3e-5 of a weight.
  np.testing.assert_allclose(losses.vlb_weights(s.alphas_cumprod, "eps"),
                             ref.lvlb_weights.numpy(), rtol=3e-4)
  nhwc = lambda a: np.transpose(a, (0, 2, 3, 1))
  alpha, sigma = (process.broadcast(f(t), nhwc(x0)) for f in (s.alpha, s.sigma))
  mse = losses.diffusion_loss(prediction="eps", model_out=nhwc(out), x0=nhwc(x0),
                              eps=nhwc(eps), alpha=alpha, sigma=sigma)
  ours = losses.ldm_objective(mse, t, logvar=logvar, simple_weight=0.7, elbo_weight=0.3,
                              vlb_weight_table=vlb_table)
  np.testing.assert_allclose(float(ours.mean()), float(theirs), rtol=1e-5)
  with pytest.raises(ValueError, match="needs vlb_weight_table"):
    losses.ldm_objective(mse, t, elbo_weight=0.1)
