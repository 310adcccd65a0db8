"""The FID Inception-v3 (TensorFlow's 2015-12-05 graph, as pytorch-fid and torch-fidelity port
it) in Flax, with the taps FID, IS, KID, precision/recall and sFID read.

  features = extract(params, images, mode="tf1")  # images: uint8 [B, H, W, 3]

returns {'pool3': [B, 2048], 'logits_unbiased': [B, 1008], 'spatial': [B, 2023]} in float32:
the final average pool (FID, KID, precision/recall), the 1008-way classifier without its bias
(torch-fidelity's and ADM's Inception Score input) and the first 7 channels of
`mixed_6/conv` (Mixed_6d's 1x1 branch after BatchNorm and ReLU, 17x17x7 flattened in h, w, c
order: ADM's sFID features).

The network is pytorch-fid's `fid_inception_v3` / torch-fidelity's
`FeatureExtractorInceptionV3`: torchvision's Inception-v3 layout with 1008 classes, BatchNorm
eps 1e-3, average pools in Mixed_5*, Mixed_6b-e and Mixed_7b that leave padding out of the
mean, and a max pool in Mixed_7c's pool branch.

How an image reaches 299x299 decides the numbers (see `preprocess`):
  tf1          TF1's bilinear resize (align_corners=False, no half-pixel offset), (x - 128) /
               128: the TF graph's own input path, which torch-fidelity and ADM's evaluator
               use; comparable with the LDM paper's tables (the default);
  pytorch_fid  x / 255, torch's bilinear resize (align_corners=False, half-pixel centres, no
               antialiasing), 2x - 1: pytorch-fid's.
At 299 px neither resizes, but their scales differ slightly (x / 128 - 1 against x / 127.5 - 1);
elsewhere the resizes differ too, and so do the FIDs of the same images.

Weights: `python -m ldm_jax.eval.inception_convert` makes our .npz from the PyTorch file
(pt_inception-2015-12-05-6726825d.pth); `load_params` reads it back with its source sha256.
"""

import functools
import hashlib
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.convert import files
from ldm_jax.convert import torch_weights

SIZE = 299  # The network's input side.
MODES = ("tf1", "pytorch_fid")
NUM_CLASSES = 1008
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7].
TAPS = ("pool3", "logits_unbiased", "spatial")
# The 8 hex digits in the reference files' names (pt_inception-2015-12-05-6726825d.pth),
# by torch hub's convention the start of their sha256; not checked here against the real
# files, which this machine cannot download.
NAME_HASH = "6726825d"
Precision = jax.lax.Precision


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm (inference, eps 1e-3) -> ReLU; torch's BasicConv2d."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: Any = Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, (self.stride, self.stride),
                padding=[(p, p) for p in self.padding], use_bias=False,
                precision=self.precision, name="conv")(x)
    bn = BatchNormParams(self.features, name="bn")
    scale, bias, mean, var = bn()
    return nn.relu((x - mean) * (scale * jax.lax.rsqrt(var + 1e-3)) + bias)


class BatchNormParams(nn.Module):
  """Holds a BatchNorm's four arrays as parameters, under torch's names."""
  features: int

  @nn.compact
  def __call__(self):
    ones, zeros = nn.initializers.ones, nn.initializers.zeros
    return (self.param("scale", ones, (self.features,)),
            self.param("bias", zeros, (self.features,)),
            self.param("running_mean", zeros, (self.features,)),
            self.param("running_var", ones, (self.features,)))


def _avg_pool(x):  # 3x3, stride 1, padding 1, the padding left out of each mean.
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride=2, pad=0):
  return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
  pool_features: int
  precision: Any = Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvBN, precision=self.precision)
    b1 = c(64, (1, 1), name="branch1x1")(x)
    b5 = c(64, (5, 5), padding=(2, 2), name="branch5x5_2")(c(48, (1, 1), name="branch5x5_1")(x))
    b3 = c(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = c(self.pool_features, (1, 1), name="branch_pool")(_avg_pool(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  precision: Any = Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvBN, precision=self.precision)
    b3 = c(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = c(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = c(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = c(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  precision: Any = Precision.HIGHEST

  @nn.compact
  def __call__(self, x, taps=None):
    c = functools.partial(ConvBN, precision=self.precision)
    c7 = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = c(192, (1, 1), name="branch1x1")(x)
    if taps is not None:
      taps["branch1x1"] = b1
    b7 = c(c7, (1, 1), name="branch7x7_1")(x)
    b7 = c(192, **col, name="branch7x7_3")(c(c7, **row, name="branch7x7_2")(b7))
    bd = c(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = c(c7, **row, name="branch7x7dbl_3")(c(c7, **col, name="branch7x7dbl_2")(bd))
    bd = c(192, **row, name="branch7x7dbl_5")(c(c7, **col, name="branch7x7dbl_4")(bd))
    bp = c(192, (1, 1), name="branch_pool")(_avg_pool(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  precision: Any = Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvBN, precision=self.precision)
    b3 = c(320, (3, 3), stride=2, name="branch3x3_2")(c(192, (1, 1), name="branch3x3_1")(x))
    b7 = c(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = c(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = c(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = c(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (average pool branch) and Mixed_7c (`max_pool=True`)."""
  max_pool: bool = False
  precision: Any = Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvBN, precision=self.precision)
    row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
    b1 = c(320, (1, 1), name="branch1x1")(x)
    b3 = c(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([c(384, **row, name="branch3x3_2a")(b3),
                          c(384, **col, name="branch3x3_2b")(b3)], axis=-1)
    bd = c(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = c(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([c(384, **row, name="branch3x3dbl_3a")(bd),
                          c(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = _max_pool(x, stride=1, pad=1) if self.max_pool else _avg_pool(x)
    bp = c(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """[B, 299, 299, 3] network inputs (already preprocessed) -> the taps (float32)."""
  precision: Any = Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    p = self.precision
    c = functools.partial(ConvBN, precision=p)
    x = c(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = c(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = _max_pool(c(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x))
    x = c(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = _max_pool(c(192, (3, 3), name="Conv2d_4a_3x3")(x))
    for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool, precision=p, name=name)(x)
    x = InceptionB(precision=p, name="Mixed_6a")(x)
    taps = {}
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                     ("Mixed_6e", 192)):
      x = InceptionC(c7, precision=p, name=name)(x, taps if name == "Mixed_6d" else None)
    x = InceptionD(precision=p, name="Mixed_7a")(x)
    x = InceptionE(precision=p, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, precision=p, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    spatial = taps["branch1x1"][..., :SPATIAL_CHANNELS]
    return {"pool3": pool3, "logits_unbiased": UnbiasedClassifier(precision=p, name="fc")(pool3),
            "spatial": spatial.reshape(spatial.shape[0], -1)}


class UnbiasedClassifier(nn.Module):
  """The 1008-way classifier without its bias (kept in the parameters, unused): the Inception
  Score's input in torch-fidelity and ADM."""
  precision: Any = Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], NUM_CLASSES))
    self.param("bias", nn.initializers.zeros, (NUM_CLASSES,))
    return jnp.dot(x, kernel, precision=self.precision)


# --- inputs ---------------------------------------------------------------------------------
def _resize_matrix(size_in: int, size_out: int, mode: str) -> np.ndarray:
  """(size_out, size_in) bilinear weights, with the source positions computed in float32 as
  TF1's kernel (src = i * in / out) or torch's (src = (i + 0.5) * in / out - 0.5, >= 0)."""
  scale = np.float32(size_in / size_out)
  i = np.arange(size_out, dtype=np.float32)
  if mode == "tf1":
    src = i * scale
  else:
    src = np.maximum((i + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
  lo = np.minimum(src.astype(np.int64), size_in - 1)
  hi = np.minimum(lo + 1, size_in - 1)
  frac = src - lo.astype(np.float32)
  matrix = np.zeros((size_out, size_in), np.float32)
  np.add.at(matrix, (np.arange(size_out), lo), np.float32(1) - frac)
  np.add.at(matrix, (np.arange(size_out), hi), frac)
  return matrix


def check_images(images) -> None:
  """uint8 [B, H, W, C] with C 1 (grey, used as RGB) or 3."""
  shape, dtype = tuple(np.shape(images)), getattr(images, "dtype", None)
  if len(shape) != 4 or shape[-1] not in (1, 3) or min(shape[1:3], default=0) < 1:
    raise ValueError(f"Inception inputs: shape {shape}; expected [batch, height, width, 1 or "
                     f"3] images.")
  if dtype != np.uint8:
    raise ValueError(f"Inception inputs: dtype {dtype}; expected uint8 images (0..255), as "
                     f"saved to PNG: quantise float images first.")


def preprocess(images: jax.Array, mode: str = "tf1") -> jax.Array:
  """uint8 [B, H, W, 1|3] -> the network's float32 [B, 299, 299, 3] input (see the module
  docstring for the modes)."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}: expected one of {MODES}.")
  check_images(images)
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if mode == "pytorch_fid":
    x = x / 255.0
  rows = jnp.asarray(_resize_matrix(x.shape[1], SIZE, mode))
  cols = jnp.asarray(_resize_matrix(x.shape[2], SIZE, mode))
  x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=Precision.HIGHEST)
  x = jnp.einsum("pw,bowc->bopc", cols, x, precision=Precision.HIGHEST)
  return (x - 128.0) / 128.0 if mode == "tf1" else 2.0 * x - 1.0


def extract(params, images: jax.Array, mode: str = "tf1", *,
            precision=Precision.HIGHEST) -> dict[str, jax.Array]:
  """uint8 images -> {'pool3', 'logits_unbiased', 'spatial'} (pure; jit with `mode` static)."""
  return InceptionV3(precision=precision).apply({"params": params}, preprocess(images, mode))


# --- weights --------------------------------------------------------------------------------
_META = "__meta__/"


def param_shapes() -> dict:
  """The parameter tree's shapes and dtypes; nothing computed."""
  x = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.key(0), x)["params"]


def params_from_torch(state_dict, source: str = "the state dict") -> dict:
  """Our tree from pytorch-fid's / torch-fidelity's Inception state dict (torchvision names:
  `Mixed_6d.branch1x1.conv.weight`, `...bn.running_var`, `fc.weight`); every missing,
  unexpected or mis-shaped key is named in one WeightMismatchError."""
  try:
    return torch_weights.to_flax(state_dict, param_shapes(),
                                 ignore=(r"\.num_batches_tracked$",))
  except torch_weights.WeightMismatchError as e:
    raise torch_weights.WeightMismatchError(
        f"{source} does not hold the FID Inception-v3 (pt_inception-2015-12-05-6726825d.pth "
        f"layout): {e}") from e


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def convert(weights: str, out: str) -> dict:
  """Reads the PyTorch file `weights`, writes our .npz `out` (must be new) with the source's
  sha256; returns the info `load_params` gives."""
  if os.path.exists(out):
    raise FileExistsError(f"--out={out} exists; Inception weights are never written over. "
                          f"Choose a new file.")
  params = params_from_torch(files.read_file(weights), weights)
  info = {"source_sha256": _sha256(weights), "source_file": os.path.basename(weights)}
  flat = {k: np.asarray(v, np.float32)
          for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
  flat.update({_META + k: np.asarray(v) for k, v in info.items()})
  with open(out, "xb") as f:
    np.savez(f, **flat)
  return _info(info)


def _info(meta: dict) -> dict:
  return {**meta, "name_hash_match": meta["source_sha256"].startswith(NAME_HASH)}


def load_params(path: str) -> tuple[dict, dict]:
  """(parameter tree, info) from a file `convert` wrote; info: source_sha256, source_file,
  name_hash_match (whether that sha256 starts with the 6726825d of the reference files'
  names)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"No Inception weights file {path}. Make it from pytorch-fid's weights "
        f"(github.com/mseitzer/pytorch-fid/releases: pt_inception-2015-12-05-6726825d.pth; "
        f"torch-fidelity's weights-inception-2015-12-05-6726825d.pth serves too):\n"
        f"  python -m ldm_jax.eval.inception_convert "
        f"--weights=pt_inception-2015-12-05-6726825d.pth --out={path}")
  entries = files.read_npz(path, "Inception weights")
  meta = {k[len(_META):]: str(v) for k, v in entries.items() if k.startswith(_META)}
  flat = {k: v for k, v in entries.items() if not k.startswith(_META)}
  if "source_sha256" not in meta:
    raise ValueError(f"{path} has no {_META}source_sha256 entry: it was not written by "
                     f"`python -m ldm_jax.eval.inception_convert`.")
  expected = flax.traverse_util.flatten_dict(param_shapes(), sep="/")
  problems = [f"missing {k} {tuple(v.shape)}" for k, v in expected.items() if k not in flat]
  problems += [f"{k}: shape {flat[k].shape}, expected {tuple(v.shape)}"
               for k, v in expected.items() if k in flat and flat[k].shape != tuple(v.shape)]
  problems += [f"unexpected {k} {flat[k].shape}" for k in flat if k not in expected]
  if problems:
    raise torch_weights.WeightMismatchError(
        f"{path} does not hold our FID Inception-v3 parameters:\n  " + "\n  ".join(problems))
  params = flax.traverse_util.unflatten_dict(
      {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep="/")
  return params, _info(meta)
