"""Autoencoder losses against taming's VQLPIPSWithDiscriminator and CompVis'
LPIPSWithDiscriminator (PyTorch), with LPIPS replaced on both sides by one fixed function."""

import importlib
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import references
from tests import torch_reference as ref
from tests.models import discriminator_test as disc_ref

torch = ref.torch

from ldm_jax.convert import taming  # pylint: disable=g-import-not-at-top
from ldm_jax.models.discriminator import NLayerDiscriminator  # pylint: disable=g-import-not-at-top
from ldm_jax.models.distributions import DiagonalGaussian  # pylint: disable=g-import-not-at-top
from ldm_jax.training import autoencoder_loss as L  # pylint: disable=g-import-not-at-top

TOLERANCE = 1e-5
BATCH, SIDE, HIDDEN, DISC_LAYERS = 2, 16, 4, 2


class _StubLPIPS(torch.nn.Module):
  """Stands in for taming's LPIPS, whose constructor would download VGG weights: a fixed,
  differentiable distance per example, [batch, 1, 1, 1] as LPIPS returns."""

  def forward(self, a, b):
    return torch.mean(torch.abs(torch.tanh(a) - torch.tanh(b)), dim=(1, 2, 3), keepdim=True)


def _perceptual(x, y):
  """_StubLPIPS on our side: one value per example."""
  return jnp.mean(jnp.abs(jnp.tanh(x) - jnp.tanh(y)), axis=(1, 2, 3))


_LOSS_MODULES = ("taming.modules.losses", "taming.modules.losses.vqperceptual",
                 "taming.modules.losses.lpips", "ldm.modules.losses",
                 "ldm.modules.losses.contperceptual")


def _import_with_stub_lpips(name):
  """Imports a reference loss module with taming's lpips module replaced by the stub; the
  modules imported here are taken out of sys.modules again afterwards."""
  references.require("taming.modules.discriminator.model")
  saved = {n: sys.modules.pop(n) for n in _LOSS_MODULES if n in sys.modules}
  stub = types.ModuleType("taming.modules.losses.lpips")
  stub.LPIPS = _StubLPIPS
  sys.modules[stub.__name__] = stub
  try:
    return importlib.import_module(name)
  except ImportError as error:
    references.missing(name, error)
  finally:
    for n in _LOSS_MODULES:
      sys.modules.pop(n, None)
    sys.modules.update(saved)


def _setup(seed):
  """Images, a tiny last layer (a 1x1 conv of fixed features) and a random discriminator."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (BATCH, SIDE, SIDE, 3)).astype(np.float32)
  hidden = rng.standard_normal((BATCH, SIDE, SIDE, HIDDEN)).astype(np.float32)
  kernel = (0.5 * rng.standard_normal((HIDDEN, 3))).astype(np.float32)  # (in, out)
  bias = (0.1 * rng.standard_normal(3)).astype(np.float32)
  theirs_disc = disc_ref.taming_discriminator(3, 64, DISC_LAYERS, seed=seed)
  return x, hidden, kernel, bias, theirs_disc


def _torch_last_layer(hidden, kernel, bias):
  weight = torch.from_numpy(np.ascontiguousarray(kernel.T[:, :, None, None]))
  weight.requires_grad_(True)
  recon = torch.nn.functional.conv2d(ref.nchw(hidden), weight, torch.from_numpy(bias))
  return weight, recon


def _disc_apply(params, stats, images):
  logits, updates = NLayerDiscriminator(ndf=64, n_layers=DISC_LAYERS).apply(
      {"params": params, "batch_stats": stats}, images, train=True, mutable=["batch_stats"])
  return logits, updates["batch_stats"]


def _generator_side(*, x, hidden, kernel, bias, params, stats, nll_kwargs, disc_weight,
                    disc_factor, step, disc_start):
  """What a training step computes for the generator: (terms, updated batch_stats)."""
  recon_of = lambda k: jnp.einsum("bhwc,cd->bhwd", hidden, k) + bias

  def nll_of(k, **extra):
    recon = recon_of(k)
    return L.reconstruction_nll(x, recon, perceptual=_perceptual(x, recon), **nll_kwargs,
                                **extra)

  def g_of(k):
    logits, new_stats = _disc_apply(params, stats, recon_of(k))
    return L.generator_loss(logits), new_stats

  (g_loss, new_stats), g_grads = jax.value_and_grad(g_of, has_aux=True)(kernel)
  nll_grads = jax.grad(lambda k: nll_of(k).nll)(kernel)
  d_weight = L.adaptive_weight(nll_grads, g_grads, discriminator_weight=disc_weight)
  factor = L.adopt_weight(disc_factor, step, disc_start)
  terms = {"nll": nll_of(kernel), "g_loss": g_loss, "d_weight": d_weight,
           "disc_factor": factor, "gan": d_weight * factor * g_loss}
  return terms, new_stats


def _discriminator_side(*, x, recon, params, stats, kind, disc_factor, step, disc_start):
  """Real and fake logits from two train-mode calls, as the originals (stats threaded)."""
  logits_real, stats = _disc_apply(params, stats, x)
  logits_fake, stats = _disc_apply(params, stats, recon)
  factor = L.adopt_weight(disc_factor, step, disc_start)
  d_loss = factor * L.discriminator_loss(logits_real, logits_fake, kind=kind)
  return {"disc_loss": d_loss, "logits_real": logits_real.mean(),
          "logits_fake": logits_fake.mean()}, stats


def _compare(name, ours: dict, theirs: dict, stats, theirs_disc):
  errors = {k: ref.relative_error(ours[k], theirs[k].detach().numpy()) for k in ours}
  for module, leaves in disc_ref.running_stats(theirs_disc).items():
    for leaf, value in leaves.items():
      errors[f"{module}/{leaf}"] = ref.relative_error(stats[module][leaf], value)
  print(f"{name} relative errors: {errors}")
  assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.parity
@pytest.mark.parametrize("step", [3, 7])  # Before and after disc_start=5.
@pytest.mark.parametrize("kind", ["hinge", "vanilla"])
def test_vq_objective_matches_taming(kind, step):
  vqperceptual = _import_with_stub_lpips("taming.modules.losses.vqperceptual")
  x, hidden, kernel, bias, theirs_disc = _setup(seed=11)
  loss = vqperceptual.VQLPIPSWithDiscriminator(
      disc_start=5, codebook_weight=0.9, disc_num_layers=DISC_LAYERS, disc_factor=0.8,
      disc_weight=0.6, perceptual_weight=0.7, disc_loss=kind)
  loss.discriminator = theirs_disc
  loss.train()
  params, stats = taming.from_taming(theirs_disc.state_dict())
  codebook_loss = np.float32(0.37)
  weight, recon = _torch_last_layer(hidden, kernel, bias)
  total, log = loss(torch.tensor(codebook_loss), ref.nchw(x), recon, 0, step,
                    last_layer=weight)
  terms, stats = _generator_side(
      x=x, hidden=hidden, kernel=kernel, bias=bias, params=params, stats=stats,
      nll_kwargs=dict(logvar=None, perceptual_weight=0.7, reduction="mean"),
      disc_weight=0.6, disc_factor=0.8, step=step, disc_start=5)
  ours = {"train/total_loss": terms["nll"].nll + terms["gan"] + 0.9 * codebook_loss,
          "train/nll_loss": terms["nll"].nll, "train/rec_loss": terms["nll"].rec,
          "train/g_loss": terms["g_loss"], "train/d_weight": terms["d_weight"]}
  assert float(log["train/disc_factor"]) == float(terms["disc_factor"])
  _compare(f"VQ[{kind}, step {step}] generator", ours, {**log, "train/total_loss": total},
           stats, theirs_disc)

  d_loss, log = loss(torch.tensor(codebook_loss), ref.nchw(x), recon, 1, step)
  ours, stats = _discriminator_side(x=x, recon=ref.nhwc(recon), params=params, stats=stats,
                                    kind=kind, disc_factor=0.8, step=step, disc_start=5)
  theirs = {"disc_loss": d_loss, "logits_real": log["train/logits_real"],
            "logits_fake": log["train/logits_fake"]}
  if step < 5:
    assert float(ours["disc_loss"]) == float(d_loss.detach()) == 0.0
    ours.pop("disc_loss")
  _compare(f"VQ[{kind}, step {step}] discriminator", ours, theirs, stats, theirs_disc)


@pytest.mark.parity
@pytest.mark.parametrize("use_weights", [False, True])
def test_kl_objective_matches_compvis(use_weights):
  contperceptual = _import_with_stub_lpips("ldm.modules.losses.contperceptual")
  distributions = references.require("ldm.modules.distributions.distributions")
  x, hidden, kernel, bias, theirs_disc = _setup(seed=12)
  loss = contperceptual.LPIPSWithDiscriminator(
      disc_start=2, logvar_init=0.3, kl_weight=0.01, disc_num_layers=DISC_LAYERS,
      disc_factor=1.0, disc_weight=0.5, perceptual_weight=0.7)
  loss.discriminator = theirs_disc
  loss.train()
  params, stats = taming.from_taming(theirs_disc.state_dict())
  rng = np.random.default_rng(13)
  moments = rng.standard_normal((BATCH, 4, 4, 8)).astype(np.float32)
  weights = rng.uniform(0.5, 1.5, x.shape).astype(np.float32) if use_weights else None
  weight, recon = _torch_last_layer(hidden, kernel, bias)
  posterior = distributions.DiagonalGaussianDistribution(ref.nchw(moments))
  total, log = loss(ref.nchw(x), recon, posterior, 0, 4, last_layer=weight,
                    weights=None if weights is None else ref.nchw(weights))
  nll_kwargs = dict(logvar=0.3, perceptual_weight=0.7)
  terms, stats = _generator_side(x=x, hidden=hidden, kernel=kernel, bias=bias, params=params,
                                 stats=stats, nll_kwargs=nll_kwargs, disc_weight=0.5,
                                 disc_factor=1.0, step=4, disc_start=2)
  weighted = terms["nll"].nll
  if weights is not None:
    weighted = L.reconstruction_nll(x, ref.nhwc(recon), perceptual=_perceptual(
        x, ref.nhwc(recon)), weights=weights, **nll_kwargs).nll
  ours_posterior = DiagonalGaussian.from_moments(moments)
  kl = L.kl_loss(ours_posterior.mean, ours_posterior.logvar)
  ours = {"train/total_loss": weighted + 0.01 * kl + terms["gan"],
          "train/nll_loss": terms["nll"].nll, "train/rec_loss": terms["nll"].rec,
          "train/kl_loss": kl, "train/g_loss": terms["g_loss"],
          "train/d_weight": terms["d_weight"]}
  assert abs(float(weighted) - float(terms["nll"].nll)) > 1e-3 or weights is None
  _compare(f"KL[weights={use_weights}] generator", ours, {**log, "train/total_loss": total},
           stats, theirs_disc)

  d_loss, log = loss(ref.nchw(x), recon, posterior, 1, 4)
  ours, stats = _discriminator_side(x=x, recon=ref.nhwc(recon), params=params, stats=stats,
                                    kind="hinge", disc_factor=1.0, step=4, disc_start=2)
  _compare(f"KL[weights={use_weights}] discriminator", ours,
           {"disc_loss": d_loss, "logits_real": log["train/logits_real"],
            "logits_fake": log["train/logits_fake"]}, stats, theirs_disc)


@pytest.mark.parity
def test_gan_losses_and_adopt_weight_match_taming():
  vqperceptual = _import_with_stub_lpips("taming.modules.losses.vqperceptual")
  rng = np.random.default_rng(3)
  real, fake = (2.0 * rng.standard_normal((2, 3, 5, 5, 1))).astype(np.float32)
  errors = {}
  for name, fn in L.DISC_LOSSES.items():
    theirs = getattr(vqperceptual, f"{name}_d_loss")(ref.nchw(real), ref.nchw(fake)).numpy()
    errors[name] = ref.relative_error(fn(jnp.asarray(real), jnp.asarray(fake)), theirs)
  print(f"GAN loss relative errors: {errors}")
  assert max(errors.values()) <= TOLERANCE, errors
  jitted = jax.jit(L.adopt_weight, static_argnums=(2,))
  for step in (0, 4, 5, 6, 100):
    for threshold in (0, 5):
      theirs = vqperceptual.adopt_weight(0.75, step, threshold=threshold, value=0.1)
      assert float(jitted(0.75, jnp.int32(step), threshold, 0.1)) == pytest.approx(theirs)
  assert float(L.generator_loss(jnp.asarray(fake))) == pytest.approx(-fake.mean(), rel=1e-6)


def test_adaptive_weight_by_hand():
  """Last layer y = h W + b (a 1x1 conv), nll = 0.5 * sum((y - x)^2), g = -mean(y):
  dnll/dW = h^T (y - x), dnll/db = sum(y - x), dg/dW = -(h^T 1) / y.size, dg/db = -n / y.size.
  """
  rng = np.random.default_rng(4)
  h = rng.standard_normal((2, 3, 3, 5))
  x = rng.standard_normal((2, 3, 3, 2))
  w, b = rng.standard_normal((5, 2)), rng.standard_normal(2)
  conv = nn.Conv(2, (1, 1))
  variables = {"params": {"kernel": jnp.asarray(w[None, None], jnp.float32),
                          "bias": jnp.asarray(b, jnp.float32)}}
  y_of = lambda p: conv.apply({"params": p}, jnp.asarray(h, jnp.float32))
  nll_grads = jax.grad(lambda p: 0.5 * jnp.sum(jnp.square(y_of(p) - x)))(variables["params"])
  g_grads = jax.grad(lambda p: -jnp.mean(y_of(p)))(variables["params"])

  flat_h, residual = h.reshape(-1, 5), (h @ w + b - x).reshape(-1, 2)
  n = flat_h.shape[0]
  nll_w, nll_b = flat_h.T @ residual, residual.sum(axis=0)
  g_w = -np.repeat(flat_h.sum(axis=0)[:, None], 2, axis=1) / (2 * n)
  g_b = -np.full(2, n / (2 * n))
  by_hand = np.linalg.norm(nll_w) / (np.linalg.norm(g_w) + 1e-4)
  ours = L.adaptive_weight(nll_grads["kernel"], g_grads["kernel"])
  both = np.sqrt(np.sum(nll_w**2) + np.sum(nll_b**2)) / (
      np.sqrt(np.sum(g_w**2) + np.sum(g_b**2)) + 1e-4)
  errors = {"kernel": abs(float(ours) - by_hand) / by_hand,
            "pytree": abs(float(L.adaptive_weight(nll_grads, g_grads)) - both) / both}
  print(f"adaptive_weight vs hand: {errors} (weight {by_hand:.4f})")
  assert max(errors.values()) <= TOLERANCE, errors
  scaled = L.adaptive_weight(nll_grads, g_grads, discriminator_weight=0.3)
  np.testing.assert_allclose(scaled, 0.3 * both, rtol=TOLERANCE)
  # Clipped before the discriminator weight multiplies it; no gradient flows through it.
  zero = jax.tree.map(jnp.zeros_like, g_grads)
  assert float(L.adaptive_weight(nll_grads, zero)) == 1e4
  assert float(L.adaptive_weight(nll_grads, zero, discriminator_weight=0.5)) == 5e3
  grad = jax.grad(lambda s: L.adaptive_weight(s * nll_grads["kernel"], g_grads["kernel"]))(1.0)
  assert float(grad) == 0.0


@pytest.mark.parity
def test_kl_loss_matches_compvis_distribution():
  distributions = references.require("ldm.modules.distributions.distributions")
  moments = np.random.default_rng(5).standard_normal((3, 4, 4, 6)).astype(np.float32)
  moments[0, 0, 0, 3] = 40.0  # Clipped logvar.
  theirs = distributions.DiagonalGaussianDistribution(ref.nchw(moments)).kl()
  posterior = DiagonalGaussian.from_moments(moments)
  ours = L.kl_loss(posterior.mean, posterior.logvar)
  error = ref.relative_error(ours, (theirs.sum() / theirs.shape[0]).numpy())
  print(f"kl_loss relative error: {error}")
  assert error <= TOLERANCE


def test_reconstruction_nll_reductions_and_errors():
  rng = np.random.default_rng(6)
  x, y = rng.uniform(-1, 1, (2, 2, 4, 4, 3)).astype(np.float32)
  p = np.array([0.2, 0.5], np.float32)
  # Expected values in float64. Ours sums 96 float32 terms, whose rounding can reach
  # 96 x 6e-8 = 5.7e-6 of the sum (measured up to 4.2e-7 here, 9e-8 at XLA's default
  # optimisation level); a wrong reduction or weighting is off by 1e-1 or more.
  rtol = 1e-5
  x64, y64, p64 = (a.astype(np.float64) for a in (x, y, p))
  rec = np.abs(x64 - y64) + 0.5 * p64[:, None, None, None]
  kl = L.reconstruction_nll(x, y, logvar=0.4, perceptual=p, perceptual_weight=0.5)
  np.testing.assert_allclose(kl.nll, (rec / np.exp(0.4) + 0.4).sum() / 2, rtol=rtol)
  np.testing.assert_allclose(kl.rec, rec.mean(), rtol=rtol)
  vq = L.reconstruction_nll(x, y, logvar=None, perceptual=p[:, None, None, None],
                            perceptual_weight=0.5, reduction="mean")
  np.testing.assert_allclose(vq.nll, rec.mean(), rtol=rtol)
  l2 = L.reconstruction_nll(x, y, logvar=None, rec_loss="l2", reduction="mean")
  np.testing.assert_allclose(l2.nll, np.square(x64 - y64).mean(), rtol=rtol)
  jitted = jax.jit(lambda a, b, lv: L.reconstruction_nll(a, b, logvar=lv).nll)
  np.testing.assert_allclose(jitted(x, y, 0.0), np.abs(x64 - y64).sum() / 2, rtol=rtol)
  with pytest.raises(ValueError, match="rec_loss='l3'"):
    L.reconstruction_nll(x, y, rec_loss="l3")
  with pytest.raises(ValueError, match="reduction='sum'"):
    L.reconstruction_nll(x, y, reduction="sum")
  with pytest.raises(ValueError, match=r"perceptual has shape \(3,\)"):
    L.reconstruction_nll(x, y, perceptual=np.zeros(3, np.float32))
  with pytest.raises(ValueError, match=r"differ in shape"):
    L.reconstruction_nll(x, y[:1])
  with pytest.raises(ValueError, match=r"logvar must be a scalar"):
    L.reconstruction_nll(x, y, logvar=np.zeros(2))
  with pytest.raises(ValueError, match="'wgan'"):
    L.discriminator_loss(x, y, kind="wgan")
