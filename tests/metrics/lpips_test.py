"""LPIPS-VGG16 against the PyTorch `lpips` package: its real v0.1 heads, a random VGG16 trunk.

torchvision is not installed here and its ImageNet VGG16 cannot be downloaded, so the package
is imported against a stub `torchvision.models` whose vgg16() returns a randomly initialised
network of torchvision's exact `features` layout.
"""

import contextlib
import importlib
import importlib.util
import os
import subprocess
import sys
import types

import flax
import jax
import numpy as np
import pytest

from ldm_jax.convert import torch_weights
from ldm_jax.metrics import lpips as lpips_jax
from tests import references

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOLERANCE = 1e-5  # Distances: max |ours - theirs| / max |theirs|.
GRAD_TOLERANCE = 1e-4  # Gradients through 13 float32 convs, same measure.


def _vgg16(torch, seed: int):
  """torchvision's VGG16 module names, `features` laid out as torchvision's, random weights.

  Kernels are He-normal (activations keep their scale through the 13 ReLU layers), biases
  small but non-zero so that a lost bias shows. The classifier is a small stand-in: the
  converter must skip `classifier.*` keys whatever their shapes.
  """
  layers, channels = [], 3
  for width, depth in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
    for _ in range(depth):
      layers += [torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.ReLU(inplace=True)]
      channels = width
    layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for layer in layers:
      if isinstance(layer, torch.nn.Conv2d):
        fan_in = layer.weight[0].numel()
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) *
                           (2.0 / fan_in) ** 0.5)
        layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=generator))
  vgg = torch.nn.Module()
  vgg.features = torch.nn.Sequential(*layers)
  vgg.classifier = torch.nn.Linear(8, 2)
  return vgg


@contextlib.contextmanager
def _lpips_package(vgg):
  """The lpips package, freshly imported against a stub torchvision whose vgg16() is `vgg`.

  lpips.pretrained_networks does `from torchvision import models as tv` and calls
  `tv.vgg16(pretrained=...)`; newer callers pass `weights=`. The stub, and the lpips modules
  imported against it, are gone from sys.modules afterwards.
  """
  models = types.ModuleType("torchvision.models")
  models.vgg16 = lambda pretrained=False, weights=None, **kwargs: vgg
  torchvision = types.ModuleType("torchvision")
  torchvision.models = models
  before = set(sys.modules)
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(sys.modules, "torchvision", torchvision)
    patch.setitem(sys.modules, "torchvision.models", models)
    for name in [n for n in sys.modules if n.split(".")[0] == "lpips"]:
      patch.delitem(sys.modules, name)
    try:
      yield importlib.import_module("lpips")
    finally:
      for name in set(sys.modules) - before:
        if name.split(".")[0] == "lpips":
          del sys.modules[name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The package's LPIPS, its trunk and heads files, and our weights converted by the CLI."""
  torch = references.require("torch")
  if importlib.util.find_spec("lpips") is None:
    references.missing("the lpips package (.venv/compvis-reference)", "not found")
  vgg = _vgg16(torch, seed=0)
  with _lpips_package(vgg) as package:
    model = package.LPIPS(net="vgg", version="0.1", pretrained=True, verbose=False).eval()
    heads_file = os.path.join(os.path.dirname(package.__file__), "weights", "v0.1", "vgg.pth")
  # LPIPS loads its heads with strict=False: check they really are the bundled ones.
  for name, value in torch.load(heads_file, map_location="cpu").items():
    assert torch.equal(model.state_dict()[name], value), name
  directory = tmp_path_factory.mktemp("lpips")
  vgg_file, out = str(directory / "vgg16.pth"), str(directory / "lpips_vgg.npz")
  torch.save(vgg.state_dict(), vgg_file)
  command = [sys.executable, "-m", "ldm_jax.eval.lpips_convert", f"--vgg={vgg_file}",
             f"--heads={heads_file}", f"--out={out}"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "XLA_FLAGS": "", "PYTHONPATH": ROOT})
  assert result.returncode == 0, result.stderr[-3000:]
  return types.SimpleNamespace(torch=torch, model=model, vgg_file=vgg_file,
                               heads_file=heads_file, out=out,
                               params=lpips_jax.load_params(out))


def _images(seed: int = 0):
  """4 pairs: smooth-ish images and copies perturbed by less and less; the last identical."""
  rng = np.random.default_rng(seed)
  coarse = np.repeat(np.repeat(rng.uniform(-1, 1, (4, 8, 8, 3)), 8, axis=1), 8, axis=2)
  x = np.clip(coarse + 0.2 * rng.normal(size=coarse.shape), -1, 1).astype(np.float32)
  amplitude = np.array([0.5, 0.1, 0.02, 0.0])[:, None, None, None]
  y = np.clip(x + amplitude * rng.normal(size=x.shape), -1, 1).astype(np.float32)
  return x, y


@pytest.mark.parity
def test_matches_lpips_package(reference):
  torch = reference.torch
  x, y = _images()
  x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  y_torch = torch.from_numpy(y.transpose(0, 3, 1, 2).copy())
  theirs = reference.model(x_torch, y_torch)
  theirs.sum().backward()
  theirs = theirs.detach().numpy().reshape(-1)
  theirs_grad = x_torch.grad.numpy().transpose(0, 2, 3, 1)

  lpips_fn = lpips_jax.make_lpips(reference.params)  # As a training loss would use it.

  def loss(x, y):
    d = lpips_fn(x, y)
    return d.sum(), d

  (_, ours), ours_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(x, y)
  ours, ours_grad = np.asarray(ours, np.float64), np.asarray(ours_grad, np.float64)
  error = np.abs(ours - theirs).max() / np.abs(theirs).max()
  per_pair = np.abs(ours - theirs)[:3] / np.abs(theirs)[:3]
  grad_error = np.abs(ours_grad - theirs_grad).max() / np.abs(theirs_grad).max()
  print(f"LPIPS-VGG16 vs lpips {theirs}: max relative error {error:.2e} (per pair "
        f"{per_pair.max():.2e}); d/dx {grad_error:.2e}; identical pair {ours[3]:.1e}")
  # Identical images: exactly 0 in PyTorch, float32 rounding of 0 here (see lpips.LPIPS).
  assert theirs[3] == 0 and abs(ours[3]) <= 1e-10, (theirs[3], ours[3])
  assert np.all(theirs[:3] > 0) and np.all(np.diff(theirs[:3]) < 0), theirs
  assert error <= TOLERANCE, error
  assert np.all(np.isfinite(ours_grad)) and grad_error <= GRAD_TOLERANCE, grad_error


@pytest.mark.parity
def test_converts_lpips_state_dict_layout(reference):
  """A whole LPIPS state dict (`net.sliceK.N.*`, `lin*`, `scaling_layer.*`) as both files."""
  state = reference.model.state_dict()
  params = lpips_jax.params_from_torch(state, state)
  ours = flax.traverse_util.flatten_dict(params, sep="/")
  saved = flax.traverse_util.flatten_dict(reference.params, sep="/")
  assert sorted(ours) == sorted(saved)
  for key, value in ours.items():
    np.testing.assert_array_equal(value, saved[key], err_msg=key)


@pytest.mark.parity
def test_heads_file_errors(reference, tmp_path):
  torch = reference.torch
  heads = torch.load(reference.heads_file, map_location="cpu")
  del heads["lin3.model.1.weight"]
  torch.save(heads, str(tmp_path / "heads.pth"))
  out = tmp_path / "out.npz"
  with pytest.raises(torch_weights.WeightMismatchError,
                     match=r"missing lin3\.model\.1\.weight, expected shape \(1, 512, 1, 1\)"):
    lpips_jax.convert(vgg=reference.vgg_file, heads=str(tmp_path / "heads.pth"), out=str(out))
  assert not out.exists()
  # The package's AlexNet heads: lin1 has 192 channels where VGG16 has 128.
  alex = os.path.join(os.path.dirname(reference.heads_file), "alex.pth")
  with pytest.raises(torch_weights.WeightMismatchError,
                     match=r"lin1\.model\.1\.weight has shape \(1, 192, 1, 1\), expected "
                           r"\(1, 128, 1, 1\)"):
    lpips_jax.convert(vgg=reference.vgg_file, heads=alex, out=str(out))


def test_convert_refuses_to_overwrite(tmp_path):
  out = tmp_path / "lpips_vgg.npz"
  out.write_bytes(b"keep")
  with pytest.raises(FileExistsError, match="never written over"):
    lpips_jax.convert(vgg=str(tmp_path / "vgg16.pth"), heads=str(tmp_path / "vgg.pth"),
                      out=str(out))
  assert out.read_bytes() == b"keep"


def test_load_params_errors(tmp_path):
  missing = str(tmp_path / "nowhere.npz")
  with pytest.raises(FileNotFoundError,
                     match=rf"{missing}.*\n.*python -m ldm_jax\.eval\.lpips_convert"):
    lpips_jax.load_params(missing)
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with pytest.raises(ValueError, match="is not an .npz file of LPIPS weights"):
    lpips_jax.load_params(str(tmp_path / "junk.npz"))
  path = tmp_path / "wrong.npz"
  np.savez(path, **{"lin2/kernel": np.zeros((1, 1, 128, 1), np.float32)})
  with pytest.raises(torch_weights.WeightMismatchError) as error:
    lpips_jax.load_params(str(path))
  message = str(error.value)
  assert "lin2/kernel: " + str(path) + " has shape (1, 1, 128, 1), LPIPS expects " \
         "(1, 1, 256, 1)" in message, message
  assert "missing vgg/conv5_3/kernel: expected shape (3, 3, 512, 512)" in message, message


@pytest.mark.parametrize("x_shape,y_shape,match", [
    ((2, 64, 64, 1), (2, 64, 64, 1), r"\(2, 64, 64, 1\); expected RGB images"),
    ((2, 3, 64, 64), (2, 3, 64, 64), r"NCHW\? LPIPS takes NHWC"),
    ((64, 64, 3), (64, 64, 3), r"x has shape \(64, 64, 3\)"),
    ((2, 64, 64, 3), (2, 32, 32, 3), r"must have the same shape"),
    ((2, 8, 8, 3), (2, 8, 8, 3), r"8x8 are too small"),
])
def test_rejects_bad_images(x_shape, y_shape, match):
  shapes = lpips_jax.param_shapes()
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lpips_jax.distance, shapes, jax.ShapeDtypeStruct(x_shape, np.float32),
                   jax.ShapeDtypeStruct(y_shape, np.float32))
  image = jax.ShapeDtypeStruct((2, 17, 16, 3), np.float32)
  assert jax.eval_shape(lpips_jax.distance, shapes, image, image).shape == (2,)


def test_normalize_channels():
  features = np.random.default_rng(0).normal(size=(2, 3, 5, 8)).astype(np.float32)
  features[0, 1, 2] = 0.0  # A pixel with every channel off.
  expected = features / (np.sqrt((features ** 2).sum(-1, keepdims=True)) + 1e-10)
  np.testing.assert_allclose(lpips_jax.normalize_channels(features), expected, rtol=1e-6)
  # d/df of f / (|f| + eps) at f = 0 is 1 / eps (finite); |f|'s own 0/0 is taken as 0.
  weights = np.random.default_rng(1).normal(size=features.shape).astype(np.float32)
  grad = jax.grad(lambda f: (lpips_jax.normalize_channels(f) * weights).sum())(features)
  assert np.all(np.isfinite(grad)), grad
