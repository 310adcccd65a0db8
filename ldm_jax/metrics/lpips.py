"""LPIPS perceptual distance with a VGG16 trunk, as the PyTorch `lpips` package (v0.1, vgg).

  d(x, y) = sum_l mean_hw( w_l . (n(f_l(x')) - n(f_l(y')))^2 )

x' = (x - SHIFT) / SCALE is the package's ScalingLayer applied to images in [-1, 1]; f_l are
the ReLU outputs relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of ImageNet VGG16;
n(f) = f / (||f||_2 over channels + 1e-10); w_l are the learnt 1x1 heads lin0..lin4 (no bias;
the package clamps them to >= 0 while fitting them to human judgements). Images are NHWC,
[B, H, W, 3] with H, W >= 16; the result is one distance per example, [B], in float32.

Weights live in one `.npz` file: the parameter tree flattened with '/' ('vgg/conv1_1/kernel',
'vgg/conv1_1/bias', ..., 'lin0/kernel', ...), float32, kernels HWIO. Make it with
  python -m ldm_jax.eval.lpips_convert --vgg=vgg16-397923af.pth \
      --heads=<site-packages>/lpips/weights/v0.1/vgg.pth --out=lpips_vgg.npz
and use it as `distance(load_params(path), x, y)` or `make_lpips(load_params(path))(x, y)`,
both pure, for jax.jit and jax.grad.
"""

import os
import re
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.convert import files
from ldm_jax.convert import torch_weights

# lpips.ScalingLayer: per-channel (RGB) shift and scale, float32 as the package's buffers.
SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALE = np.array([0.458, 0.448, 0.450], np.float32)
# lpips.normalize_tensor's epsilon, added to the channel norm.
EPS = 1e-10
# The trunk's downsampling: relu5_3 is the input size / 16 (four 2x2 max pools before it).
MIN_SIZE = 16

# VGG16's five blocks (width, convs); every 3x3 conv is followed by a ReLU, blocks by a max
# pool. The last ReLU of each block is an LPIPS tap.
_VGG_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
TAP_WIDTHS = tuple(width for width, _ in _VGG_BLOCKS)


def _vgg_convs() -> tuple[tuple[int, str, int, int], ...]:
  """(index in torchvision's `features` Sequential, our name, in, out channels) per conv."""
  convs, index, channels = [], 0, 3
  for block, (width, depth) in enumerate(_VGG_BLOCKS, start=1):
    for layer in range(1, depth + 1):
      convs.append((index, f"conv{block}_{layer}", channels, width))
      index, channels = index + 2, width  # The conv and its ReLU.
    index += 1  # The block's max pool.
  return tuple(convs)


VGG_CONVS = _vgg_convs()  # (0, 'conv1_1', 3, 64), (2, 'conv1_2', 64, 64), (5, ...), ...

Precision = Any


class VGG16Features(nn.Module):
  """The convolutional trunk of VGG16 up to relu5_3, on NHWC input; returns the 5 taps."""
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x) -> tuple[jax.Array, ...]:
    taps = []
    for block, (width, depth) in enumerate(_VGG_BLOCKS, start=1):
      if block > 1:  # torch MaxPool2d(2, 2): floor of odd sizes, as 'VALID'.
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
      for layer in range(1, depth + 1):
        x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=jnp.float32,
                    param_dtype=jnp.float32, precision=self.precision,
                    name=f"conv{block}_{layer}")(x)
        x = nn.relu(x)
      taps.append(x)
    return tuple(taps)


def normalize_channels(features: jax.Array, eps: float = EPS) -> jax.Array:
  """features / (L2 norm over the last axis + eps), as lpips.normalize_tensor.

  At a pixel where every channel is 0 (all ReLUs off) the norm's derivative is 0/0, which is
  NaN in PyTorch and in a plain jnp.sqrt; here it is taken as 0, so gradients of the distance
  stay finite. Values are unchanged.
  """
  squared = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
  positive = squared > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
  return features / (norm + eps)


def check_images(x, y) -> None:
  """Raises ValueError unless x and y are equal-shape NHWC RGB batches of at least 16x16."""
  for name, image in (("x", x), ("y", y)):
    shape = tuple(np.shape(image))
    if len(shape) != 4 or shape[-1] != 3:
      hint = " (NCHW? LPIPS takes NHWC)" if len(shape) == 4 and shape[1] == 3 else ""
      raise ValueError(f"LPIPS: {name} has shape {shape}{hint}; expected RGB images "
                       f"[B, H, W, 3] in [-1, 1].")
  if np.shape(x) != np.shape(y):
    raise ValueError(f"LPIPS: x {tuple(np.shape(x))} and y {tuple(np.shape(y))} must have "
                     f"the same shape.")
  if min(np.shape(x)[1:3]) < MIN_SIZE:
    raise ValueError(f"LPIPS: images of {np.shape(x)[1]}x{np.shape(x)[2]} are too small; "
                     f"VGG16's relu5_3 needs H, W >= {MIN_SIZE}.")


class LPIPS(nn.Module):
  """LPIPS-VGG16 distance between image batches x, y: [B, H, W, 3] in [-1, 1] -> [B].

  Identical images give 0 up to float32 rounding (|d| ~ 1e-16 measured on CPU), not always
  exactly 0 as in PyTorch: XLA's fused kernels may round the same channel norm differently
  at two places of a batch.

  `precision` is that of every conv; HIGHEST keeps float32 arithmetic on GPU/TPU, whose
  default would round conv inputs to TF32/bfloat16.
  """
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x, y) -> jax.Array:
    check_images(x, y)
    batch = x.shape[0]
    both = jnp.concatenate([x, y]).astype(jnp.float32)  # One trunk pass for the two.
    taps = VGG16Features(precision=self.precision, name="vgg")((both - SHIFT) / SCALE)
    total = None
    for level, features in enumerate(taps):
      features = normalize_channels(features)
      squared = jnp.square(features[:batch] - features[batch:])
      weighted = nn.Conv(1, (1, 1), use_bias=False, dtype=jnp.float32,
                         param_dtype=jnp.float32, precision=self.precision,
                         name=f"lin{level}")(squared)
      term = weighted.mean(axis=(1, 2))[:, 0]
      total = term if total is None else total + term  # Summed in the package's order.
    return total


def distance(params, x, y, *, precision: Precision = jax.lax.Precision.HIGHEST) -> jax.Array:
  """LPIPS distance [B] of NHWC images in [-1, 1]; pure (jit, grad and vmap it freely)."""
  return LPIPS(precision=precision).apply({"params": params}, x, y)


def make_lpips(params, *, precision: Precision = jax.lax.Precision.HIGHEST
               ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`fn(x, y) -> [B]` closing over `params` (constants to jax.jit / jax.grad of fn)."""
  return lambda x, y: distance(params, x, y, precision=precision)


def param_shapes() -> dict:
  """The parameter tree's shapes and dtypes (jax.ShapeDtypeStruct leaves); nothing computed."""
  image = jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
  return jax.eval_shape(LPIPS().init, jax.random.key(0), image, image)["params"]


def _check_tree(flat: Mapping[str, np.ndarray], source: str) -> None:
  """Raises WeightMismatchError naming every missing, unexpected or mis-shaped key."""
  expected = flax.traverse_util.flatten_dict(param_shapes(), sep="/")
  problems = [f"missing {key}: expected shape {tuple(leaf.shape)}"
              for key, leaf in expected.items() if key not in flat]
  problems += [f"{key}: {source} has shape {tuple(np.shape(flat[key]))}, LPIPS expects "
               f"{tuple(leaf.shape)}" for key, leaf in expected.items()
               if key in flat and tuple(np.shape(flat[key])) != tuple(leaf.shape)]
  problems += [f"unexpected {key} {tuple(np.shape(value))}" for key, value in flat.items()
               if key not in expected]
  if problems:
    raise torch_weights.WeightMismatchError(
        f"{source} does not hold LPIPS-VGG16 parameters:\n  " + "\n  ".join(problems))


def save_params(params, path: str) -> None:
  """Writes `params` to a new .npz file at `path` (the name is used as given)."""
  flat = {key: np.asarray(value, np.float32)
          for key, value in flax.traverse_util.flatten_dict(params, sep="/").items()}
  _check_tree(flat, "the tree to save")
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; LPIPS weights are never written over. Choose a "
                          f"new file.")
  with open(path, "xb") as f:
    np.savez(f, **flat)


def load_params(path: str) -> dict:
  """The parameter tree (float32 jax arrays) from a file written by `save_params`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"No LPIPS weights file {path}. Make it from torchvision's VGG16 state dict and the "
        f"lpips package's heads:\n  python -m ldm_jax.eval.lpips_convert "
        f"--vgg=vgg16-397923af.pth --heads=<site-packages>/lpips/weights/v0.1/vgg.pth "
        f"--out={path}")
  flat = files.read_npz(path, "LPIPS weights")
  _check_tree(flat, path)
  flat = {key: jnp.asarray(value, jnp.float32) for key, value in flat.items()}
  return flax.traverse_util.unflatten_dict(flat, sep="/")


# PyTorch keys. Trunk: torchvision's `features.N.*`, or the lpips package's `net.sliceK.N.*`
# (the same N), after any prefix. Heads: `linL.model.M.weight` (M is 1 behind the package's
# Dropout, 0 without it).
_TRUNK_KEY = re.compile(r"(?:^|\.)(?:features|slice[1-5])\.(\d+)\.(weight|bias)$")
_HEAD_KEY = re.compile(r"(?:^|\.)lin(\d+)\.model\.\d+\.weight$")
# Keys a trunk file may carry beside the trunk (torchvision's classifier, a whole LPIPS
# state dict's heads and buffers), and a heads file beside the heads. An LPIPS state dict
# repeats every head `linL.*` as `lins.L.*` (a ModuleList of the same modules).
_TRUNK_OTHERS = re.compile(r"(?:^|\.)(?:classifier|scaling_layer|lins)\.|" + _HEAD_KEY.pattern)
_HEAD_OTHERS = re.compile(r"(?:^|\.)(?:scaling_layer|lins)\.|" + _TRUNK_KEY.pattern)


def _collect(state: Mapping[str, Any], pattern: re.Pattern, others: re.Pattern,
             source: str, problems: list[str]) -> dict[tuple[str, ...], tuple[str, Any]]:
  """Keys of `state` matching `pattern`, by the pattern's groups; the rest -> problems."""
  found = {}
  for key, value in state.items():
    match = pattern.search(key)
    if match is None:
      if not others.search(key):
        problems.append(f"{source}: unexpected key {key} {tuple(np.shape(value))}")
    elif match.groups() in found:
      problems.append(f"{source}: {key} and {found[match.groups()][0]} are the same weight")
    else:
      found[match.groups()] = (key, value)
  return found


def _take(found: dict, groups: tuple[str, ...], name: str, shape: tuple[int, ...],
          source: str, problems: list[str]) -> np.ndarray | None:
  if groups not in found:
    problems.append(f"{source}: missing {name}, expected shape {shape}")
    return None
  key, value = found.pop(groups)
  array = np.asarray(torch_weights.to_numpy(value), np.float32)
  if array.shape != shape:
    problems.append(f"{source}: {key} has shape {array.shape}, expected {shape}")
    return None
  return array


def params_from_torch(vgg_state: Mapping[str, Any], heads_state: Mapping[str, Any], *,
                      vgg_source: str = "vgg", heads_source: str = "heads") -> dict:
  """Our parameter tree from PyTorch state dicts (name -> tensor or array).

  `vgg_state`: torchvision's VGG16 (`features.N.weight|bias`; `classifier.*` is ignored) or
  the lpips package's trunk (`net.sliceK.N.*`). `heads_state`: the package's
  `weights/v0.1/vgg.pth` (`linL.model.1.weight`, (1, C, 1, 1)). A whole
  `lpips.LPIPS(net='vgg').state_dict()` serves as both. OIHW kernels become HWIO. Every
  missing, unexpected or mis-shaped key is reported in one WeightMismatchError, naming
  `vgg_source` / `heads_source` (the file names).
  """
  problems: list[str] = []
  trunk = _collect(vgg_state, _TRUNK_KEY, _TRUNK_OTHERS, vgg_source, problems)
  heads = _collect(heads_state, _HEAD_KEY, _HEAD_OTHERS, heads_source, problems)
  params: dict[str, Any] = {"vgg": {}}
  for index, name, channels_in, channels_out in VGG_CONVS:
    kernel = _take(trunk, (str(index), "weight"), f"features.{index}.weight",
                   (channels_out, channels_in, 3, 3), vgg_source, problems)
    bias = _take(trunk, (str(index), "bias"), f"features.{index}.bias", (channels_out,),
                 vgg_source, problems)
    if kernel is not None and bias is not None:
      params["vgg"][name] = {"kernel": kernel.transpose(2, 3, 1, 0), "bias": bias}
  for level, width in enumerate(TAP_WIDTHS):
    kernel = _take(heads, (str(level),), f"lin{level}.model.1.weight", (1, width, 1, 1),
                   heads_source, problems)
    if kernel is not None:
      params[f"lin{level}"] = {"kernel": kernel.transpose(2, 3, 1, 0)}
  for source, left in ((vgg_source, trunk), (heads_source, heads)):
    problems += [f"{source}: unexpected key {key} {tuple(np.shape(value))} (not a VGG16 "
                 f"conv / LPIPS head)" for key, value in left.values()]
  if problems:
    raise torch_weights.WeightMismatchError(
        "PyTorch weights do not fit LPIPS-VGG16:\n  " + "\n  ".join(problems))
  return params


def convert(*, vgg: str, heads: str, out: str) -> dict:
  """Reads the PyTorch files `vgg` and `heads`, writes our weights file `out` (must be new).

  `.pth` / `.pt` / `.ckpt` / `.bin` files need torch; `.safetensors` files do not.
  """
  if os.path.exists(out):
    raise FileExistsError(f"--out={out} exists; LPIPS weights are never written over. "
                          f"Choose a new file.")
  params = params_from_torch(files.read_file(vgg), files.read_file(heads),
                             vgg_source=vgg, heads_source=heads)
  save_params(params, out)
  return params
