"""PSNR and SSIM against scikit-image, codebook usage against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.metrics import reconstruction
from tests import references

metrics = references.require("skimage.metrics")

TOLERANCE = 1e-4
SSIM_SETTINGS = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                     data_range=2.0, channel_axis=-1)


def _pairs(shape, seed=0):
  """Smooth images in [-1, 1] and noisy reconstructions of them, at several noise levels."""
  rng = np.random.default_rng(seed)
  base = rng.uniform(-1, 1, (shape[0], -(-shape[1] // 4), -(-shape[2] // 4), shape[3]))
  x = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)[:, :shape[1], :shape[2]]
  x = np.clip(x + 0.1 * rng.standard_normal(x.shape), -1, 1)
  noise = np.linspace(0.02, 0.6, shape[0]).reshape(-1, 1, 1, 1)
  y = np.clip(x + noise * rng.standard_normal(x.shape), -1, 1)
  return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("shape", [(4, 32, 32, 3), (3, 11, 20, 1), (2, 24, 17, 2)])
def test_psnr_and_ssim_match_skimage(shape):
  x, y = _pairs(shape)
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  theirs_psnr = np.array([metrics.peak_signal_noise_ratio(a, b, data_range=2.0)
                          for a, b in zip(x64, y64)])
  # SSIM of [-1, 1] images: scikit-image's on the images shifted to [0, 2] (ours by default),
  # and scikit-image's on the raw [-1, 1] values (ours with minimum=0).
  theirs_ssim = np.array([metrics.structural_similarity(a + 1, b + 1, **SSIM_SETTINGS)
                          for a, b in zip(x64, y64)])
  theirs_raw = np.array([metrics.structural_similarity(a, b, **SSIM_SETTINGS)
                         for a, b in zip(x64, y64)])
  ours_psnr = jax.jit(reconstruction.psnr)(x, y)
  ours_ssim = jax.jit(reconstruction.ssim)(x, y)
  ours_raw = jax.jit(lambda a, b: reconstruction.ssim(a, b, minimum=0.0))(x, y)
  errors = {"psnr": float(np.abs(ours_psnr - theirs_psnr).max()),
            "ssim": float(np.abs(ours_ssim - theirs_ssim).max()),
            "ssim_raw": float(np.abs(ours_raw - theirs_raw).max())}
  print(f"{shape}: max |ours - skimage| {errors}; ssim {np.round(theirs_ssim, 4)}")
  assert ours_psnr.shape == ours_ssim.shape == (shape[0],)
  assert errors["psnr"] <= TOLERANCE
  assert max(errors["ssim"], errors["ssim_raw"]) <= TOLERANCE
  assert np.ptp(theirs_ssim) > 0.1  # The test sees a range of qualities.


def test_identical_images_and_other_data_range():
  x, y = _pairs((2, 16, 16, 3), seed=1)
  np.testing.assert_allclose(reconstruction.ssim(x, x), 1.0, atol=1e-6)
  assert np.all(np.isinf(reconstruction.psnr(x, x)))
  x01, y01 = (x + 1) / 2, (y + 1) / 2  # [0, 1] images, data_range 1: the same metrics.
  np.testing.assert_allclose(reconstruction.psnr(x01, y01, data_range=1.0),
                             reconstruction.psnr(x, y), rtol=1e-5)
  ours01 = reconstruction.ssim(x01, y01, data_range=1.0, minimum=0.0)
  np.testing.assert_allclose(ours01, reconstruction.ssim(x, y), atol=1e-5)
  theirs = metrics.structural_similarity(x01[0].astype(np.float64), y01[0].astype(np.float64),
                                         **{**SSIM_SETTINGS, "data_range": 1.0})
  assert abs(float(ours01[0]) - theirs) <= TOLERANCE
  # Without the shift the luminance term differs: the shift is not a no-op.
  assert np.abs(reconstruction.ssim(x, y, minimum=0.0) - reconstruction.ssim(x, y)).max() > 1e-3
  with pytest.raises(ValueError, match=r"at least 11x11.*\(1, 10, 16, 3\)"):
    reconstruction.ssim(x[:1, :10], y[:1, :10])
  with pytest.raises(ValueError, match=r"\(2, 16, 16, 3\) and \(1, 16, 16, 3\)"):
    reconstruction.psnr(x, y[:1])


def test_codebook_usage_matches_numpy():
  rng = np.random.default_rng(2)
  n = 16
  indices = rng.choice(12, size=(3, 5, 5), p=np.arange(1, 13) / 78.0)  # Codes 12..15 unused.
  counts = np.bincount(indices.ravel(), minlength=n).astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  perplexity, used = jax.jit(reconstruction.codebook_usage, static_argnums=1)(
      jnp.asarray(indices, jnp.int32), n)
  assert abs(float(perplexity) - np.exp(-np.sum(p * np.log(p)))) <= 1e-5 * n
  assert float(used) == np.count_nonzero(counts) / n
  one, used_one = reconstruction.codebook_usage(np.zeros((2, 4, 4), np.int32), n)
  assert float(one) == pytest.approx(1.0) and float(used_one) == 1 / n
  every, used_all = reconstruction.codebook_usage(np.arange(n), n)
  assert float(every) == pytest.approx(n, rel=1e-6) and float(used_all) == 1.0
  with pytest.raises(ValueError, match=r"indices span \[0, 16\], outside \[0, 16\)"):
    reconstruction.codebook_usage(np.arange(n + 1), n)
