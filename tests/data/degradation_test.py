"""The BSRGAN degradation (ldm_jax/data/degradation.py) against what the reference uses:
OpenCV's resize and JPEG, scipy.ndimage.convolve, the reference's own kernels and MATLAB
resize, and, as a distribution, the reference's whole `degradation_bsrgan_variant`."""

import sys
import types

import numpy as np
import pytest
import scipy.interpolate
import scipy.ndimage
import tensorflow as tf

from ldm_jax.data import degradation
from tests import references

cv2 = references.require("cv2")

_CV2 = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


class _Interp2d:
  """scipy's removed `interp2d(x, y, z)` (linear, regular grid), which the reference's
  `shift_pixel` still calls; evaluated by RegularGridInterpolator."""

  def __init__(self, x, y, z):
    self._f = scipy.interpolate.RegularGridInterpolator((y, x), z, method="linear")

  def __call__(self, xnew, ynew):
    yy, xx = np.meshgrid(ynew, xnew, indexing="ij")
    return self._f(np.stack([yy, xx], -1))


@pytest.fixture(scope="module")
def reference():
  """The reference's modules, imported with stand-ins for what this machine lacks: modules
  they only import (albumentations, torchvision: unused by the functions tested here) and
  what newer SciPy removed (`interp2d`, above; `scipy.finfo`, NumPy's)."""
  stubs = {"albumentations": types.ModuleType("albumentations"),
           "torchvision": types.ModuleType("torchvision"),
           "torchvision.utils": types.ModuleType("torchvision.utils")}
  stubs["torchvision.utils"].make_grid = None
  saved = {name: sys.modules.get(name) for name in stubs}
  sys.modules.update(stubs)
  removed = [(scipy.interpolate, "interp2d", _Interp2d), (scipy, "finfo", np.finfo)]
  originals = [(module, name, module.__dict__.get(name)) for module, name, _ in removed]
  for module, name, stand_in in removed:
    setattr(module, name, stand_in)
  try:
    yield types.SimpleNamespace(
        bsrgan=references.require("ldm.modules.image_degradation.bsrgan"),
        light=references.require("ldm.modules.image_degradation.bsrgan_light"),
        util=references.require("ldm.modules.image_degradation.utils_image"))
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module
    for module, name, original in originals:
      if original is None:
        delattr(module, name)
      else:
        setattr(module, name, original)


def _image(h, w, c=3, seed=0):
  return np.random.default_rng(seed).uniform(size=(h, w, c)).astype(np.float32)


@pytest.mark.parametrize("method", ["linear", "cubic", "area"])
@pytest.mark.parametrize("size_in,size_out", [(37, 11), (12, 5), (16, 8), (16, 16), (9, 14),
                                              (5, 13)])
def test_resize_matches_opencv(method, size_in, size_out):
  image = _image(size_in, size_in + 3)
  out_w = size_out + 2
  ours = degradation.resize(tf.constant(image), size_out, out_w, method).numpy()
  theirs = cv2.resize(image, (out_w, size_out), interpolation=_CV2[method])
  np.testing.assert_allclose(ours, theirs, atol=2e-3 if method == "area" else 2e-5)


def test_matlab_resize_matches_reference(reference):
  image = _image(24, 32)
  ours = degradation.resize(tf.constant(image), 12, 16, "matlab_bicubic").numpy()
  theirs = reference.util.imresize_np(image, 0.5, True)
  np.testing.assert_allclose(ours, theirs, atol=2e-6)


@pytest.mark.parametrize("ksize", [1, 5, 6, 14, 25])
def test_convolve_matches_ndimage_mirror(ksize):
  image = _image(9, 12, seed=1)  # The 25-wide kernel reflects more than once.
  kernel = np.random.default_rng(2).uniform(size=(ksize, ksize))
  ours = degradation.convolve(tf.constant(image), tf.constant(kernel, tf.float32)).numpy()
  theirs = scipy.ndimage.convolve(image, kernel[..., None], mode="mirror")
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size,sigma", [(5, 0.3), (7, 1.4), (25, 2.2)])
def test_gaussian_kernel_matches_fspecial(reference, size, sigma):
  np.testing.assert_allclose(degradation.gaussian_kernel(size, sigma).numpy(),
                             reference.light.fspecial("gaussian", size, sigma), atol=1e-7)


@pytest.mark.parametrize("size,theta,l1,l2", [(5, 0.4, 1.7, 0.3), (8, 2.5, 0.6, 1.9),
                                              (25, 1.1, 7.5, 2.0)])
def test_anisotropic_kernel_matches_reference(reference, size, theta, l1, l2):
  ours = degradation.anisotropic_gaussian_kernel(size, tf.constant(theta), tf.constant(l1),
                                                 tf.constant(l2)).numpy()
  np.testing.assert_allclose(ours, reference.light.anisotropic_Gaussian(size, theta, l1, l2),
                             atol=1e-7)


def test_narrow_even_kernels_keep_their_shape():
  """Where every value of the reference's kernel underflows (even size, tiny width), ours
  is the limit: the four central taps, 1/4 each (the reference gives zeros, or NaN)."""
  centre = np.zeros((6, 6), np.float32)
  centre[2:4, 2:4] = 0.25
  np.testing.assert_allclose(degradation.gaussian_kernel(6, 0.01).numpy(), centre, atol=1e-7)
  aniso = degradation.anisotropic_gaussian_kernel(6, tf.constant(0.0), tf.constant(1e-4),
                                                  tf.constant(1e-4)).numpy()
  np.testing.assert_allclose(aniso, centre, atol=1e-7)


@pytest.mark.parametrize("sf", [2, 4])
def test_shifted_kernel_matches_reference(reference, sf):
  kernel = reference.light.fspecial("gaussian", 25, 1.3)
  theirs = reference.light.shift_pixel(kernel.copy(), sf)
  theirs = theirs / theirs.sum()
  ours = degradation.shift_kernel(tf.constant(kernel, tf.float32), sf).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-7)


@pytest.mark.parametrize("quality", [30, 80, 95])
def test_jpeg_round_trip_matches_opencv(quality):
  photo = _photo(64)
  ours = degradation.jpeg(tf.constant(photo), tf.constant(quality)).numpy()
  bgr = cv2.cvtColor(np.round(photo * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
  _, data = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
  theirs = cv2.cvtColor(cv2.imdecode(data, 1), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
  np.testing.assert_array_equal(ours, theirs)


def _photo(size):
  """scikit-image's astronaut, its centre 384 px area-resized to size x size, in [0, 1]."""
  from skimage import data as skdata
  crop = skdata.astronaut()[64:448, 64:448]
  return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _ours(photo, count, factor, variant):
  ds = tf.data.Dataset.range(count).map(lambda i: degradation.degrade(
      tf.constant(photo), tf.stack([i, tf.constant(5, tf.int64)]), factor=factor,
      variant=variant))
  return np.stack([x.numpy() for x in ds])


def test_degrade_is_seeded_and_on_the_8_bit_grid():
  photo = _photo(32)
  first, again = _ours(photo, 6, 4, "bsrgan"), _ours(photo, 6, 4, "bsrgan")
  np.testing.assert_array_equal(first, again)
  assert first.shape == (6, 8, 8, 3)
  assert len({x.tobytes() for x in first}) == 6  # Every seed draws its own degradation.
  np.testing.assert_allclose(first * 255, np.round(first * 255), atol=1e-4)
  gray = _ours(photo[..., :1], 3, 2, "bsrgan_light")
  assert gray.shape == (3, 16, 16, 1)


@pytest.mark.parametrize("variant", ["bsrgan_light", "bsrgan"])
def test_degradation_statistics_match_reference(reference, variant):
  """Over 300 draws each, ours and the reference's `degradation_bsrgan_variant` degrade a
  photo alike: mean intensity, mean |LR - clean area-downsampled| and mean |Laplacian(LR)|
  (sharpness) agree within 4 standard errors of their difference.

  The reference's black outputs are left out: an even-sized narrow Gaussian underflows to
  an all-zero kernel there (about 0.3% of bsrgan_light draws); ours has none."""
  import random
  count, factor = 300, 4
  photo = _photo(64)
  clean = cv2.resize(photo, (16, 16), interpolation=cv2.INTER_AREA)
  module = reference.light if variant == "bsrgan_light" else reference.bsrgan
  state, py_state = np.random.get_state(), random.getstate()
  np.random.seed(0)
  random.seed(0)
  try:
    theirs = np.stack([
        module.degradation_bsrgan_variant(np.round(photo * 255).astype(np.uint8),
                                          sf=factor)["image"] for _ in range(count)])
  finally:
    np.random.set_state(state)
    random.setstate(py_state)
  theirs = theirs.astype(np.float32) / 255
  ours = _ours(photo, count, factor, variant)
  assert ours.shape == theirs.shape == (count, 16, 16, 3)
  assert ours.mean(axis=(1, 2, 3)).min() > 30 / 255
  theirs = theirs[theirs.mean(axis=(1, 2, 3)) > 30 / 255]

  def stats(lr):
    return {
        "mean": lr.mean(axis=(1, 2, 3)) * 255,
        "error": np.abs(lr - clean).mean(axis=(1, 2, 3)) * 255,
        "sharpness": np.abs(np.stack([scipy.ndimage.laplace(x) for x in lr])).mean(
            axis=(1, 2, 3)) * 255,
    }

  mine, ref = stats(ours), stats(theirs)
  for name in mine:
    a, b = mine[name], ref[name]
    gap = abs(a.mean() - b.mean())
    se = np.sqrt(a.var() / len(a) + b.var() / len(b))
    print(f"{variant} {name}: ours {a.mean():.3f} reference {b.mean():.3f} "
          f"(gap {gap / se:.2f} standard errors)")
    assert gap < 4 * se, (name, a.mean(), b.mean(), se)
