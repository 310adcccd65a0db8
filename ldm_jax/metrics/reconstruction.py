"""Reconstruction metrics per example (PSNR, SSIM) and codebook usage, jit-able.

Images are NHWC in [-1, 1], hence `data_range=2` by default. SSIM follows Wang et al. (2004)
as scikit-image computes it with `gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, channel_axis=-1`: an 11x11 Gaussian window (sigma 1.5, truncated
at 3.5 sigma), K1=0.01, K2=0.03, population (co)variances, the SSIM map averaged over the
positions where the whole window lies inside the image (scikit-image filters with reflected
borders, then crops the 5-pixel border, so the border never counts), then over channels.

SSIM's luminance term is not shift-invariant: it assumes intensities in [0, data_range]. So
`ssim` first subtracts `minimum` (-1 by default), giving the SSIM of the images mapped to
[0, 2] -- the same as of [0, 1] or uint8 [0, 255] images with data_range 1 or 255, the
numbers papers report. PSNR does not depend on the shift.
"""

import jax
import jax.numpy as jnp
import numpy as np

SIGMA, TRUNCATE, K1, K2 = 1.5, 3.5, 0.01, 0.03


def _check(x, y, name):
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f"{name}: expected two NHWC images of one shape, got {x.shape} and "
                     f"{y.shape}.")


def psnr(x: jax.Array, y: jax.Array, data_range: float = 2.0) -> jax.Array:
  """10 log10(data_range^2 / MSE) per example ([batch]); MSE over all pixels and channels.

  Identical images give +inf (as scikit-image's peak_signal_noise_ratio, which divides by 0).
  """
  _check(x, y, "psnr")
  diff = x.astype(jnp.float32) - y.astype(jnp.float32)
  mse = jnp.mean(jnp.square(diff), axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range**2 / mse)


def gaussian_window(sigma: float = SIGMA, truncate: float = TRUNCATE) -> np.ndarray:
  """The normalised 1D Gaussian taps scipy.ndimage uses: radius int(truncate * sigma + 0.5)."""
  radius = int(truncate * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-0.5 * np.square(offsets / sigma))
  return taps / taps.sum()


def _filter(images: jax.Array, taps: jax.Array) -> jax.Array:
  """Separable 'valid' Gaussian filter of NHWC images, each channel on its own."""
  channels = images.shape[-1]
  size = taps.shape[0]
  rows = jnp.tile(taps.reshape(size, 1, 1, 1), (1, 1, 1, channels))
  cols = jnp.tile(taps.reshape(1, size, 1, 1), (1, 1, 1, channels))
  out = images
  for kernel in (rows, cols):
    out = jax.lax.conv_general_dilated(
        out, kernel, window_strides=(1, 1), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
        precision=jax.lax.Precision.HIGHEST)
  return out


def ssim(x: jax.Array, y: jax.Array, data_range: float = 2.0, *,
         minimum: float = -1.0) -> jax.Array:
  """Mean structural similarity per example ([batch]), as scikit-image (see module doc).

  scikit-image's `structural_similarity(x - minimum, y - minimum, data_range=data_range,
  ...)` of each example; `minimum` is the lowest intensity of the images' range (0 for images
  already in [0, data_range]). Images must be at least 11x11. Computed in float32 from
  centred values (each image pair shifted by one constant per channel, which leaves every
  variance and covariance unchanged but keeps their E[x^2] - E[x]^2 from cancelling).
  """
  _check(x, y, "ssim")
  taps_np = gaussian_window()
  size = taps_np.shape[0]
  if min(x.shape[1:3]) < size:
    raise ValueError(f"ssim needs images of at least {size}x{size}, got {x.shape}.")
  taps = jnp.asarray(taps_np, jnp.float32)
  x, y = x.astype(jnp.float32) - minimum, y.astype(jnp.float32) - minimum
  shift = 0.5 * (x.mean(axis=(1, 2), keepdims=True) + y.mean(axis=(1, 2), keepdims=True))
  xc, yc = x - shift, y - shift
  mu_xc, mu_yc = _filter(xc, taps), _filter(yc, taps)
  var_x = _filter(xc * xc, taps) - mu_xc * mu_xc
  var_y = _filter(yc * yc, taps) - mu_yc * mu_yc
  cov = _filter(xc * yc, taps) - mu_xc * mu_yc
  mu_x, mu_y = mu_xc + shift, mu_yc + shift
  c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
  numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
  denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
  return jnp.mean(numerator / denominator, axis=(1, 2, 3))


def codebook_usage(indices: jax.Array, num_embeddings: int) -> tuple[jax.Array, jax.Array]:
  """(perplexity, fraction of codes used) of the code indices of a batch.

  perplexity = exp(-sum_k p_k log p_k) with p_k the frequency of code k among all indices
  (num_embeddings when every code is equally used, 1 when one code is); the fraction counts
  the codes that occur at least once. Indices outside [0, num_embeddings) are not counted
  (under jit they cannot raise); outside jit they raise.
  """
  flat = jnp.asarray(indices).reshape(-1)
  if not isinstance(flat, jax.core.Tracer) and flat.size:
    low, high = int(flat.min()), int(flat.max())
    if low < 0 or high >= num_embeddings:
      raise ValueError(f"codebook_usage: indices span [{low}, {high}], outside "
                       f"[0, {num_embeddings}).")
  counts = jnp.bincount(flat, length=num_embeddings).astype(jnp.float32)
  p = counts / jnp.maximum(counts.sum(), 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.exp(entropy), jnp.mean(counts > 0)
