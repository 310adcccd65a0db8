"""FID, IS, KID and precision/recall (ldm_jax/metrics/generative.py) against pytorch-fid's and
torch-fidelity's own functions on the same features, and closed forms."""

import numpy as np
import pytest

from ldm_jax.metrics import generative
from tests import references


def _random_covariance(rng, dim):
  a = rng.normal(size=(dim, dim))
  return a @ a.T / dim + 0.1 * np.eye(dim)


def _features(seed, n, dim=16, shift=0.0):
  rng = np.random.default_rng(seed)
  return rng.normal(shift, 1.0, (n, dim)) @ rng.normal(size=(dim, dim)) / np.sqrt(dim)


def test_frechet_distance_closed_form_for_diagonal_covariances():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  v1, v2 = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  got = generative.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
  assert got == pytest.approx(expected, rel=1e-9)
  assert generative.frechet_distance(mu1, np.diag(v1), mu1, np.diag(v1)) == pytest.approx(
      0.0, abs=1e-9)
  with pytest.raises(ValueError, match=r"means \(6,\) vs \(5,\)"):
    generative.frechet_distance(mu1, np.diag(v1), mu2[:5], np.diag(v2[:5]))


def test_frechet_distance_equals_pytorch_fid_and_torch_fidelity():
  references.require_torchvision()
  fid = references.require("pytorch_fid.fid_score")
  fidelity = references.require("torch_fidelity.metric_fid")
  rng = np.random.default_rng(1)
  for dim in (4, 32):
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    s1, s2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
    ours = generative.frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(fid.calculate_frechet_distance(mu1, s1, mu2, s2), rel=1e-10)
    # torch-fidelity 0.4.0 takes the root's trace from eigenvalues instead of scipy's sqrtm.
    theirs = fidelity.fid_statistics_to_metric({"mu": mu1, "sigma": s1},
                                               {"mu": mu2, "sigma": s2}, False)
    eig = generative.frechet_distance(mu1, s1, mu2, s2, method="eigvals")
    assert eig == pytest.approx(theirs[fidelity.KEY_METRIC_FID], rel=1e-12)
    assert eig == pytest.approx(ours, rel=1e-8)  # Well conditioned: the two agree.
  # Fewer samples than dimensions: sqrtm's root is ill-defined, eigenvalues are not.
  few_1, few_2 = _features(8, 5, 32), _features(9, 6, 32, shift=0.5)
  stats = [generative.gaussian_moments(f) for f in (few_1, few_2)]
  theirs = fidelity.fid_statistics_to_metric(*[{"mu": m, "sigma": c} for m, c in stats], False)
  assert generative.frechet_distance(*stats[0], *stats[1], method="eigvals") == pytest.approx(
      theirs[fidelity.KEY_METRIC_FID], rel=1e-10)
  with pytest.raises(ValueError, match="method='median': expected one of"):
    generative.frechet_distance(*stats[0], *stats[1], method="median")


def test_running_moments_equal_numpy_over_the_whole_set():
  x = _features(2, 300) + 5.0  # Away from zero: the one-pass covariance must still hold.
  moments = generative.Moments()
  for part in np.array_split(x, 7):
    moments.add(part.astype(np.float32))
  mean, cov = moments.mean_and_covariance()
  ref_mean, ref_cov = generative.gaussian_moments(x.astype(np.float32))
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
  np.testing.assert_allclose(cov, ref_cov, rtol=1e-9, atol=1e-12)
  with pytest.raises(ValueError, match="dim 3; earlier batches had 16"):
    moments.add(np.zeros((2, 3)))
  with pytest.raises(ValueError, match="a covariance needs 2"):
    generative.Moments().add(x[:1]).mean_and_covariance()


def test_inception_score_equals_torch_fidelity():
  torch = references.require("torch")
  references.require_torchvision()
  isc = references.require("torch_fidelity.metric_isc")
  logits = np.random.default_rng(3).normal(0, 3, (103, 1008)).astype(np.float32)
  theirs = isc.isc_features_to_metric(torch.from_numpy(logits))
  mean, std = generative.inception_score(logits)
  assert mean == pytest.approx(theirs[isc.KEY_METRIC_ISC_MEAN], rel=1e-10)
  assert std == pytest.approx(theirs[isc.KEY_METRIC_ISC_STD], rel=1e-8)
  # Uniform predictions score 1; confident, evenly spread ones score the class count.
  assert generative.inception_score(np.zeros((20, 5)), 2)[0] == pytest.approx(1.0)
  confident = np.eye(5)[np.arange(50) % 5] * 60  # Each split holds every class 5 times.
  assert generative.inception_score(confident, 2, shuffle=False) == pytest.approx((5.0, 0.0),
                                                                                abs=1e-20 + 1e-6)


def test_kernel_distance_equals_torch_fidelity():
  torch = references.require("torch")
  references.require_torchvision()
  kid = references.require("torch_fidelity.metric_kid")
  a, b = _features(4, 60), _features(5, 70, shift=0.3)
  kw = dict(kid_subsets=10, kid_subset_size=50, verbose=False)
  theirs = kid.kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), **kw)
  mean, std = generative.kernel_distance(a, b, subsets=10, subset_size=50)
  assert mean == pytest.approx(theirs[kid.KEY_METRIC_KID_MEAN], rel=1e-10)
  assert std == pytest.approx(theirs[kid.KEY_METRIC_KID_STD], rel=1e-8)
  with pytest.raises(ValueError, match="subsets of 1000 need that many samples"):
    generative.kernel_distance(a, b)


def test_precision_recall_equal_torch_fidelity():
  torch = references.require("torch")
  references.require_torchvision()
  prc = references.require("torch_fidelity.metric_prc")
  generated, real = _features(6, 90, shift=0.5), _features(7, 120)
  precision, recall = generative.precision_recall(generated, real, block=32)
  theirs = prc.calculate_precision_recall_full(torch.from_numpy(generated),
                                               torch.from_numpy(real), neighborhood=3)
  assert (precision, recall) == pytest.approx(theirs, abs=1e-7)  # Theirs: float32 means.
  assert 0.1 < precision < 1 and 0.1 < recall < 1  # Not a trivial case.
  assert generative.precision_recall(real, real) == (1.0, 1.0)
  with pytest.raises(ValueError, match="more than 3 samples on each side"):
    generative.precision_recall(real[:3], real)
