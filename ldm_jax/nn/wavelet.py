"""The CDF 5/3 (LeGall) wavelet by lifting, and the U-ViT's wavelet stem built on it.

One 1-D level splits a signal of even length into n/2 smooth and n/2 detail coefficients:
  d[n] = x[2n+1] - (x[2n] + x[2n+2]) / 2        (predict)
  s[n] = x[2n] + (d[n-1] + d[n]) / 4            (update)
with whole-sample symmetric extension at both ends (x[-1] = x[1], x[N] = x[N-2]), as in
JPEG 2000's reversible path without its rounding. Undoing the two lifting steps in reverse
order inverts it exactly (up to float rounding). s is PyWavelets' 'bior2.2' approximation
(mode='reflect', the same extension) divided by sqrt(2) and d its detail times -sqrt(2),
boundaries included (tested).

`analysis(x, levels)` applies the 2-D transform (rows, then columns) `levels` times to every
sub-band (a wavelet packet), so [B, H, W, C] becomes [B, H/2^L, W/2^L, 4^L C]: simple
diffusion's wavelet stem downsamples at once, like a stride-2^L patching, but invertibly;
`synthesis` is its inverse (the network's head).
"""

import jax.numpy as jnp


def _split(x, axis: int):
  """(smooth, detail) halves along `axis` (even length)."""
  x = jnp.moveaxis(x, axis, 0)
  even, odd = x[0::2], x[1::2]
  even_next = jnp.concatenate([even[1:], even[-1:]])
  detail = odd - 0.5 * (even + even_next)
  detail_prev = jnp.concatenate([detail[:1], detail[:-1]])
  smooth = even + 0.25 * (detail_prev + detail)
  return jnp.moveaxis(smooth, 0, axis), jnp.moveaxis(detail, 0, axis)


def _merge(smooth, detail, axis: int):
  """Inverse of `_split`."""
  smooth, detail = jnp.moveaxis(smooth, axis, 0), jnp.moveaxis(detail, axis, 0)
  detail_prev = jnp.concatenate([detail[:1], detail[:-1]])
  even = smooth - 0.25 * (detail_prev + detail)
  even_next = jnp.concatenate([even[1:], even[-1:]])
  odd = detail + 0.5 * (even + even_next)
  x = jnp.stack([even, odd], axis=1).reshape((-1,) + even.shape[1:])
  return jnp.moveaxis(x, 0, axis)


def dwt_1d(x, axis: int = -1):
  """(smooth, detail) of one 1-D level along `axis`; its length must be even."""
  axis = axis % x.ndim
  if x.shape[axis] % 2:
    raise ValueError(f"wavelet: axis {axis} has odd length {x.shape[axis]}.")
  return _split(x, axis)


def idwt_1d(smooth, detail, axis: int = -1):
  return _merge(smooth, detail, axis % smooth.ndim)


def dwt_2d(x):
  """[B, H, W, C] -> [B, H/2, W/2, 4C]: channels ordered (LL, LH, HL, HH) x C."""
  low, high = dwt_1d(x, axis=2)  # Along W.
  ll, lh = dwt_1d(low, axis=1)  # Along H.
  hl, hh = dwt_1d(high, axis=1)
  return jnp.concatenate([ll, lh, hl, hh], axis=-1)


def idwt_2d(x):
  ll, lh, hl, hh = jnp.split(x, 4, axis=-1)
  low = idwt_1d(ll, lh, axis=1)
  high = idwt_1d(hl, hh, axis=1)
  return idwt_1d(low, high, axis=2)


def analysis(x, levels: int):
  """`levels` 2-D levels on every sub-band: [B, H, W, C] -> [B, H/2^L, W/2^L, 4^L C]."""
  if x.ndim != 4 or x.shape[1] % 2**levels or x.shape[2] % 2**levels:
    raise ValueError(f"wavelet stem: {levels} levels need NHWC images with sides divisible "
                     f"by {2**levels}; got shape {x.shape}.")
  for _ in range(levels):
    x = dwt_2d(x)
  return x


def synthesis(x, levels: int):
  """Inverse of `analysis`."""
  if x.ndim != 4 or x.shape[-1] % 4**levels:
    raise ValueError(f"wavelet head: {levels} levels need NHWC coefficients with a multiple "
                     f"of {4**levels} channels; got shape {x.shape}.")
  for _ in range(levels):
    x = idwt_2d(x)
  return x
