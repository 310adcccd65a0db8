"""LDM-BSR's low-resolution inputs: the BSRGAN degradation (Zhang et al., ICCV 2021) in
TensorFlow, per example inside the input pipeline.

CompVis trains its blind super-resolution LDM (`bsr_sr`) on `degradation: bsrgan_light`
(`ldm/modules/image_degradation/bsrgan_light.py`); `bsrgan` is the stronger original. Both run
`degradation_bsrgan_variant`: with probability 1/4 (x4 only) a first halving; then, in a random
order, blur (twice for 'bsrgan'), a random-scale downsampling (or a shifted Gaussian blur and
nearest subsampling), the final downsampling to size / factor (always after the random one),
Gaussian noise (colour, grey or channel-correlated) and JPEG compression (p = 0.9); a last JPEG
compression; rounding to 8 bits.

Every random choice comes from one stateless per-example seed, so a run's low-resolution
inputs are reproducible and resume exactly. The building blocks follow the reference's
libraries: OpenCV's resize (INTER_LINEAR, INTER_CUBIC with a = -0.75, INTER_AREA),
scipy.ndimage.convolve with mode='mirror', MATLAB's antialiased bicubic `imresize`, and
libjpeg through TensorFlow (bit-identical to OpenCV's round trip).
tests/data/degradation_test.py compares each piece with the reference's, and the whole
chain's statistics.
The ISP camera-noise stage is off in CompVis' variant and absent here.
"""

import dataclasses
import math

import tensorflow as tf

VARIANTS = ("bsrgan", "bsrgan_light")
_INTERPOLATIONS = ("linear", "cubic", "area")  # OpenCV's codes 1, 2, 3.


@dataclasses.dataclass(frozen=True)
class Strength:
  blurs: int  # Blur operations in the shuffled list.
  blur_scale: float  # Multiplies the blur widths (1/4 in the light variant).
  aniso_sizes: tuple[int, int, int]  # Kernel size = mult * randint(lo, hi) + 3.
  iso_sizes: tuple[int, int, int]
  resize_prob: float  # The random downsampling resizes (else shifted blur + subsampling).
  noise_levels: tuple[int, int]  # Gaussian noise std in 8-bit levels, randint(lo, hi).
  jpeg_quality: tuple[int, int]


STRENGTHS = {
    "bsrgan": Strength(blurs=2, blur_scale=1.0, aniso_sizes=(2, 11, 2), iso_sizes=(2, 11, 2),
                       resize_prob=0.75, noise_levels=(2, 25), jpeg_quality=(30, 95)),
    "bsrgan_light": Strength(blurs=1, blur_scale=0.25, aniso_sizes=(2, 11, 1),
                             iso_sizes=(2, 4, 1), resize_prob=0.8, noise_levels=(1, 2),
                             jpeg_quality=(80, 95)),
}


class _Draws:
  """Independent stateless draws from one seed, one sub-seed per named draw."""

  def __init__(self, seed):
    self._seed = tf.cast(seed, tf.int64)
    self._count = 0

  def _next(self):
    self._count += 1
    return tf.random.experimental.stateless_fold_in(self._seed, self._count)

  def uniform(self, shape=(), low=0.0, high=1.0):
    return tf.random.stateless_uniform(list(shape), self._next(), low, high)

  def randint(self, low: int, high: int):
    """Uniform integer in [low, high], both included (Python's random.randint)."""
    return tf.random.stateless_uniform([], self._next(), low, high + 1, dtype=tf.int32)

  def normal(self, shape):
    return tf.random.stateless_normal(shape, self._next())


# --- resampling as matrices: out = A_h @ image @ A_w^T, per channel --------------------------
def _taps_matrix(index, weights, size):
  """[out, taps] indices (clamped to the image) and weights -> [out, size] matrix."""
  index = tf.clip_by_value(index, 0, size - 1)
  return tf.reduce_sum(tf.one_hot(index, size, dtype=tf.float32) * weights[..., None], axis=1)


def _keys_cubic(d, a):
  d = tf.abs(d)
  near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
  far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
  return tf.where(d <= 1.0, near, tf.where(d < 2.0, far, 0.0))


def resize_matrix(in_size, out_size, method: str):
  """OpenCV's `cv2.resize` along one axis, for float images: [out_size, in_size]."""
  in_f, out_f = tf.cast(in_size, tf.float32), tf.cast(out_size, tf.float32)
  scale = in_f / out_f
  dst = tf.range(out_f)
  if method in ("linear", "cubic"):
    x = (dst + 0.5) * scale - 0.5
    if method == "linear":  # OpenCV moves coordinates outside the image onto its edge.
      x = tf.clip_by_value(x, 0.0, in_f - 1.0)
    left = tf.floor(x)
    frac = x - left
    left = tf.cast(left, tf.int32)
    if method == "linear":
      return _taps_matrix(tf.stack([left, left + 1], 1), tf.stack([1.0 - frac, frac], 1),
                          in_size)
    offsets = tf.range(-1, 3)
    weights = _keys_cubic(frac[:, None] - tf.cast(offsets, tf.float32)[None], -0.75)
    return _taps_matrix(left[:, None] + offsets[None], weights, in_size)
  if method != "area":
    raise ValueError(f"Unknown resize method {method!r}: expected one of {_INTERPOLATIONS}.")

  def shrink():  # Each output pixel averages the input cells it overlaps, by overlap length.
    src = tf.range(in_f)
    lo = tf.maximum(src[None, :], dst[:, None] * scale)
    hi = tf.minimum(src[None, :] + 1.0, (dst[:, None] + 1.0) * scale)
    return tf.maximum(hi - lo, 0.0) / scale

  def enlarge():  # OpenCV's INTER_AREA when enlarging: linear with cell-boundary weights.
    left = tf.floor(dst * scale)
    frac = (dst + 1.0) - (left + 1.0) / scale
    frac = tf.where(frac <= 0.0, 0.0, frac - tf.floor(frac))
    left = tf.cast(left, tf.int32)
    return _taps_matrix(tf.stack([left, left + 1], 1), tf.stack([1.0 - frac, frac], 1),
                        in_size)

  return tf.cond(scale >= 1.0, shrink, enlarge)


def matlab_resize_matrix(in_size, out_size):
  """MATLAB's `imresize(..., 'bicubic')` with antialiasing, one axis: [out_size, in_size].
  Bicubic a = -0.5, widened by 1/scale when shrinking; symmetric edge extension."""
  in_f, out_f = tf.cast(in_size, tf.float32), tf.cast(out_size, tf.float32)
  scale = out_f / in_f
  kernel_scale = tf.minimum(scale, 1.0)
  width = 4.0 / kernel_scale
  centre = (tf.range(out_f) + 1.0) / scale + 0.5 * (1.0 - 1.0 / scale)  # 1-based.
  left = tf.floor(centre - width / 2.0)
  taps = tf.cast(tf.math.ceil(width), tf.int32) + 2
  index = left[:, None] + tf.cast(tf.range(taps), tf.float32)[None]
  weights = kernel_scale * _keys_cubic((centre[:, None] - index) * kernel_scale, -0.5)
  weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)
  index = tf.cast(index, tf.int32) - 1  # 0-based; reflect with the edge pixel repeated.
  index = tf.where(index < 0, -index - 1, index)
  index = tf.where(index >= in_size, 2 * in_size - 1 - index, index)
  return _taps_matrix(index, weights, in_size)


def _apply(image, rows, cols):
  return tf.einsum("ph,hwc,qw->pqc", rows, image, cols)


def resize(image, height, width, method: str):
  shape = tf.shape(image)
  if method == "matlab_bicubic":
    rows, cols = matlab_resize_matrix(shape[0], height), matlab_resize_matrix(shape[1], width)
  else:
    rows, cols = resize_matrix(shape[0], height, method), resize_matrix(shape[1], width, method)
  return _apply(image, rows, cols)


def _random_resize(image, height, width, draws: _Draws):
  """`cv2.resize` with an interpolation drawn from linear / cubic / area."""
  choice = draws.randint(0, 2)
  branches = [lambda m=m: resize(image, height, width, m) for m in _INTERPOLATIONS]
  return tf.clip_by_value(tf.switch_case(choice, branches), 0.0, 1.0)


# --- blur -------------------------------------------------------------------------------
def mirror_index(index, size):
  """scipy.ndimage's 'mirror' extension (d c b | a b c d | c b a), any distance."""
  if_single = tf.zeros_like(index)
  period = 2 * size - 2
  folded = tf.math.floormod(index, tf.maximum(period, 1))
  folded = tf.where(folded >= size, period - folded, folded)
  return tf.where(size == 1, if_single, folded)


def convolve(image, kernel):
  """`scipy.ndimage.convolve(image, kernel[..., None], mode='mirror')` for [H, W, C]: a true
  convolution whose kernel centre is index size // 2 (even sizes included)."""
  k = tf.shape(kernel)[0]
  before, after = k - 1 - k // 2, k // 2
  shape = tf.shape(image)
  rows = mirror_index(tf.range(-before, shape[0] + after), shape[0])
  cols = mirror_index(tf.range(-before, shape[1] + after), shape[1])
  padded = tf.gather(tf.gather(image, rows, axis=0), cols, axis=1)
  channels_first = tf.transpose(padded, [2, 0, 1])[..., None]
  flipped = tf.reverse(tf.cast(kernel, tf.float32), [0, 1])[:, :, None, None]
  out = tf.nn.conv2d(channels_first, flipped, strides=1, padding="VALID")
  return tf.transpose(out[..., 0], [1, 2, 0])


def _grid(size):
  """Kernel coordinates centred on the kernel (half-integers for even sizes)."""
  return tf.range(tf.cast(size, tf.float32)) - (tf.cast(size, tf.float32) - 1.0) / 2.0


def _normalised_exp(exponent):
  """exp(exponent) / sum, computed from exponent - max: kernels whose every value would
  underflow (a narrow Gaussian of even size has no tap at its centre) keep their shape
  instead of becoming 0 / 0, where the reference yields a black or NaN image."""
  k = tf.exp(exponent - tf.reduce_max(exponent))
  return k / tf.reduce_sum(k)


def gaussian_kernel(size, sigma):
  """MATLAB's `fspecial('gaussian', size, sigma)`."""
  r = tf.cast(_grid(size), tf.float64)
  sigma = tf.maximum(tf.cast(sigma, tf.float64), 1e-6)
  h = _normalised_exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma ** 2))
  h = tf.where(h < 2.220446049250313e-16 * tf.reduce_max(h), tf.zeros_like(h), h)
  return tf.cast(h / tf.reduce_sum(h), tf.float32)


def anisotropic_gaussian_kernel(size, theta, l1, l2):
  """A Gaussian with covariance V diag(l1, l2) V, V the reflection with first column
  (cos theta, sin theta); evaluated at the kernel's pixel centres and normalised."""
  # In float64: a float32 covariance with a tiny eigenvalue can round to an indefinite one.
  # Eigenvalues are floored at 1e-6 (a zero is singular).
  theta = tf.cast(theta, tf.float64)
  c, s = tf.cos(theta), tf.sin(theta)
  v = tf.stack([tf.stack([c, s]), tf.stack([s, -c])])
  eig = tf.maximum(tf.cast(tf.stack([l1, l2]), tf.float64), 1e-6)
  precision = tf.linalg.inv(v @ tf.linalg.diag(eig) @ v)
  r = tf.cast(_grid(size), tf.float64)
  y, x = tf.meshgrid(r, r, indexing="ij")
  points = tf.stack([x, y], axis=-1)  # (x, y) per pixel, as the reference.
  quad = tf.einsum("hwi,ij,hwj->hw", points, precision, points)
  return tf.cast(_normalised_exp(-0.5 * quad), tf.float32)


def shift_kernel(kernel, sf):
  """Samples `kernel` bilinearly at (y + (sf - 1) / 2, x + (sf - 1) / 2), coordinates clamped
  to the kernel (the reference's `shift_pixel`), then normalises."""
  size = tf.shape(kernel)[0]
  shift = (tf.cast(sf, tf.float32) - 1.0) / 2.0
  pos = tf.clip_by_value(tf.range(tf.cast(size, tf.float32)) + shift, 0.0,
                         tf.cast(size, tf.float32) - 1.0)
  left = tf.floor(pos)
  frac = pos - left
  left = tf.cast(left, tf.int32)
  m = _taps_matrix(tf.stack([left, left + 1], 1), tf.stack([1.0 - frac, frac], 1), size)
  shifted = m @ kernel @ tf.transpose(m)
  return shifted / tf.reduce_sum(shifted)


def _add_blur(image, sf, strength: Strength, draws: _Draws):
  sf = tf.cast(sf, tf.float32)
  wide = (4.0 + sf) * strength.blur_scale
  narrow = (2.0 + 0.2 * sf) * strength.blur_scale
  lo, hi, mult = strength.aniso_sizes
  aniso = anisotropic_gaussian_kernel(mult * draws.randint(lo, hi) + 3,
                                      draws.uniform(high=math.pi),
                                      wide * draws.uniform(), wide * draws.uniform())
  lo, hi, mult = strength.iso_sizes
  iso_size, iso_sigma = mult * draws.randint(lo, hi) + 3, narrow * draws.uniform()
  use_aniso = draws.uniform() < 0.5
  return tf.cond(use_aniso, lambda: convolve(image, aniso),
                 lambda: convolve(image, gaussian_kernel(iso_size, iso_sigma)))


# --- noise and compression -----------------------------------------------------------------
def _add_gaussian_noise(image, strength: Strength, draws: _Draws):
  """Colour (p 0.4), grey (p 0.4) or channel-correlated (p 0.2) Gaussian noise."""
  lo, hi = strength.noise_levels
  std = tf.cast(draws.randint(lo, hi), tf.float32) / 255.0
  shape = tf.shape(image)
  channels = image.shape[-1]
  pick = draws.uniform()
  colour = draws.normal(shape) * std
  grey = draws.normal(tf.concat([shape[:2], [1]], 0)) * std
  # Covariance |L^2 U^T D U| (elementwise absolute value), U an orthonormal basis of a uniform
  # random matrix's range, D uniform on the diagonal, L the top noise level; sampled like
  # numpy's multivariate_normal, through the eigenvalues' absolute values.
  u = tf.linalg.svd(draws.uniform([channels, channels]))[1]
  d = tf.linalg.diag(draws.uniform([channels]))
  cov = tf.abs((hi / 255.0) ** 2 * tf.transpose(u) @ d @ u)
  eigvals, eigvecs = tf.linalg.eigh(cov)
  factor = eigvecs * tf.sqrt(tf.abs(eigvals))[None, :]
  correlated = tf.einsum("hwc,dc->hwd", draws.normal(tf.concat([shape[:2], [channels]], 0)),
                         factor)
  noise = tf.where(pick > 0.6, colour, tf.where(pick < 0.4, grey, correlated))
  return tf.clip_by_value(image + noise, 0.0, 1.0)


def to_uint8(image):
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)


def jpeg(image, quality):
  """8-bit JPEG round trip at `quality` (a tensor): OpenCV's bytes (4:2:0 chroma) and, with
  the accurate integer IDCT, OpenCV's decoded pixels (TensorFlow's default IDCT differs by up
  to 15 levels)."""
  data = tf.raw_ops.EncodeJpegVariableQuality(images=to_uint8(image), quality=quality)
  decoded = tf.io.decode_jpeg(data, channels=image.shape[-1], dct_method="INTEGER_ACCURATE")
  return tf.cast(decoded, tf.float32) / 255.0


def _add_jpeg(image, strength: Strength, draws: _Draws):
  return jpeg(image, draws.randint(*strength.jpeg_quality))


# --- the whole degradation --------------------------------------------------------------------
def degrade(image, seed, *, factor: int, variant: str = "bsrgan_light"):
  """[H, W, C] float in [0, 1] -> [H / factor, W / factor, C] float on the 8-bit grid."""
  if variant not in STRENGTHS:
    raise ValueError(f"data.degradation={variant!r}: expected one of {VARIANTS}.")
  strength = STRENGTHS[variant]
  height, width, channels = image.shape
  if height % factor or width % factor:
    raise ValueError(f"data.degradation_factor={factor} does not divide the {height}x{width} "
                     f"crop.")
  out_h, out_w = height // factor, width // factor
  seed = tf.cast(seed, tf.int64)
  draws = _Draws(seed)
  image = tf.cast(image, tf.float32)
  sf = tf.constant(factor, tf.int32)

  if factor == 4:  # A first halving with probability 1/4; the rest then works at x2.
    halve, by_cv2 = draws.uniform() < 0.25, draws.uniform() < 0.5

    def halved():
      return tf.cond(
          by_cv2, lambda: _random_resize(image, height // 2, width // 2, draws),
          lambda: tf.clip_by_value(resize(image, height // 2, width // 2, "matlab_bicubic"),
                                   0.0, 1.0))

    image = tf.cond(halve, halved, lambda: image)
    sf = tf.where(halve, 2, sf)

  order = tf.argsort(draws.uniform([7]))  # Operations 0..6 in a random order ...
  pos2 = tf.argmax(tf.cast(tf.equal(order, 2), tf.int32))
  pos3 = tf.argmax(tf.cast(tf.equal(order, 3), tf.int32))
  swap = pos2 > pos3  # ... except that the final downsampling (3) follows the random one (2).
  order = tf.where(swap & tf.equal(order, 2), 3, tf.where(swap & tf.equal(order, 3), 2, order))

  def step(position, img):
    """Operation order[position], its draws from the seed folded with the position."""
    draws_here = _Draws(tf.random.experimental.stateless_fold_in(seed, 100 + position))

    def random_downsample():
      shape = tf.shape(img)
      sf_f = tf.cast(sf, tf.float32)
      sf1 = draws_here.uniform(low=1.0, high=2.0 * sf_f)
      h1 = tf.maximum(tf.cast(tf.cast(shape[0], tf.float32) / sf1, tf.int32), 1)
      w1 = tf.maximum(tf.cast(tf.cast(shape[1], tf.float32) / sf1, tf.int32), 1)
      sigma = draws_here.uniform(low=0.1, high=0.6 * sf_f)
      return tf.cond(
          draws_here.uniform() < strength.resize_prob,
          lambda: _random_resize(img, h1, w1, draws_here),
          lambda: tf.clip_by_value(
              convolve(img, shift_kernel(gaussian_kernel(25, sigma), sf))[::sf, ::sf],
              0.0, 1.0))

    blur = lambda: _add_blur(img, sf, strength, draws_here)  # noqa: E731
    keep = lambda: img  # noqa: E731
    branches = [
        blur,
        blur if strength.blurs == 2 else keep,
        random_downsample,
        lambda: _random_resize(img, out_h, out_w, draws_here),
        lambda: _add_gaussian_noise(img, strength, draws_here),
        lambda: tf.cond(draws_here.uniform() < 0.9,
                        lambda: _add_jpeg(img, strength, draws_here), keep),
        keep,  # The reference's camera-ISP noise, disabled there.
    ]
    out = tf.switch_case(order[position], branches)
    out.set_shape([None, None, channels])
    return position + 1, out

  _, image = tf.while_loop(lambda position, _: position < 7, step, (0, image),
                           shape_invariants=(tf.TensorShape([]),
                                             tf.TensorShape([None, None, channels])))
  image = _add_jpeg(image, strength, draws)
  return tf.ensure_shape(tf.cast(to_uint8(image), tf.float32) / 255.0,
                         [out_h, out_w, channels])
