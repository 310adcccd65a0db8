"""Inception features of an image set, streamed: batches are sharded over the devices, FID's
and sFID's statistics are running float64 sums, and per-image features are kept only for the
metrics that need them (KID and precision/recall: pool3; IS: the unbiased logits), in memory
or, past `memmap_bytes`, in memory-mapped files in a temporary folder.
"""

import dataclasses
import functools
import tempfile

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ldm_jax.eval import image_sets
from ldm_jax.metrics import generative
from ldm_jax.metrics import inception

SPATIAL_DIM = 17 * 17 * inception.SPATIAL_CHANNELS
MIN_RELIABLE = 2048  # Below this many samples FID is strongly biased (and pool3's 2048-d
                     # covariance is singular).


@dataclasses.dataclass
class Features:
  count: int
  pool3: generative.Moments
  spatial: generative.Moments
  pool3_all: np.ndarray | None = None  # [N, 2048] float32, when kept.
  logits: np.ndarray | None = None  # [N, 1008] float32, when kept.
  # The temporary folder of memory-mapped buffers, alive as long as these features.
  folder: list = dataclasses.field(default_factory=list, repr=False)


class Extractor:
  """The jitted, sharded Inception for one weights file and input mode."""

  def __init__(self, params, mode: str = "tf1", devices=None, batch_size: int = 64):
    if mode not in inception.MODES:
      raise ValueError(f"mode={mode!r}: expected one of {inception.MODES}.")
    devices = jax.local_devices() if devices is None else list(devices)
    mesh = Mesh(np.asarray(devices), ("batch",))
    self.mode, self.num_devices = mode, len(devices)
    # Every call runs this many images (a multiple of the device count): one program.
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    self._batch = NamedSharding(mesh, P("batch"))
    self._params = jax.device_put(params, NamedSharding(mesh, P()))
    self._fn = _jitted(mode, NamedSharding(mesh, P()))

  def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [B, H, W, C] -> {tap: float32 [B, ...]}, B <= batch_size (padded to it)."""
    count = len(images)
    if count > self.batch_size:
      raise ValueError(f"{count} images in one call; the extractor takes {self.batch_size}.")
    pad = self.batch_size - count
    if pad:
      images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
    out = jax.device_get(self._fn(self._params, jax.device_put(images, self._batch)))
    return {k: np.asarray(v[:count]) for k, v in out.items()}


@functools.lru_cache(maxsize=None)
def _jitted(mode: str, out_sharding):
  """One jitted extractor per mode and device set: Extractors of the same weights shape share
  its compiled programs."""
  return jax.jit(functools.partial(inception.extract, mode=mode), out_shardings=out_sharding)


def _buffer(shape, memmap_bytes: int, folder: list) -> np.ndarray:
  if np.prod(shape) * 4 <= memmap_bytes:
    return np.empty(shape, np.float32)
  if not folder:
    folder.append(tempfile.TemporaryDirectory(prefix="ldm_jax_features_"))
  path = f"{folder[0].name}/{len(folder)}.npy"
  folder.append(path)
  return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=tuple(shape))


def extract(images: image_sets.ImageSet, extractor: Extractor, *, keep_pool3: bool = False,
            keep_logits: bool = False, memmap_bytes: int = 1 << 30, progress: bool = False,
            processes: tuple[int, int] | None = None) -> Features:
  """Streams `images` through `extractor`; see the module docstring. With several JAX
  processes (`processes` = (index, count), default jax's), each reads and extracts its
  contiguous part of the set and the results are gathered: every process returns the whole
  set's features, in the set's order."""
  index, parts = processes or (jax.process_index(), jax.process_count())
  if images.count < 2:
    raise ValueError(f"{images.name}: {images.count} image(s); the metrics need 2 at least.")
  whole, images = images, images.shard(index, parts)
  out = Features(images.count, generative.Moments(), generative.Moments())
  if keep_pool3:
    out.pool3_all = _buffer((images.count, 2048), memmap_bytes, out.folder)
  if keep_logits:
    out.logits = _buffer((images.count, inception.NUM_CLASSES), memmap_bytes, out.folder)
  done = 0
  bar = None
  if progress:
    from tqdm import auto as tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm.tqdm(total=images.count, unit="image", desc=f"Inception: {images.name}")
  try:
    for batch in images.batches(extractor.batch_size):
      features = extractor(batch)
      out.pool3.add(features["pool3"])
      out.spatial.add(features["spatial"])
      if done + len(batch) > images.count:
        raise ValueError(f"{images.name} gave more than the {images.count} images it has.")
      if keep_pool3:
        out.pool3_all[done:done + len(batch)] = features["pool3"]
      if keep_logits:
        out.logits[done:done + len(batch)] = features["logits_unbiased"]
      done += len(batch)
      if bar is not None:
        bar.update(len(batch))
  finally:
    if bar is not None:
      bar.close()
  out.count = done  # Fewer than announced where a TFDS split skips small images.
  if keep_pool3:
    out.pool3_all = out.pool3_all[:done]
  if keep_logits:
    out.logits = out.logits[:done]
  if parts > 1:
    _gather(out)
  if out.count < 2:
    raise ValueError(f"{whole.name}: {out.count} image(s) read; the metrics need 2 at least.")
  if out.count < MIN_RELIABLE:
    logging.warning("%s: %d images. FID from fewer than %d samples is strongly biased and "
                    "not comparable with published numbers (they use 50,000).", whole.name,
                    out.count, MIN_RELIABLE)
  return out


def allgather(array: np.ndarray) -> np.ndarray:
  """[processes, ...] of every process's `array` (same shape on all); float64 travels as
  bytes (JAX would narrow it to float32 without x64)."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  array = np.ascontiguousarray(array)
  raw = np.asarray(multihost_utils.process_allgather(array.view(np.uint8)))
  return raw.view(array.dtype).reshape((raw.shape[0],) + array.shape)


def _gather(out: Features) -> None:
  """Combines the processes' parts of `out` in place (process order = the set's order)."""
  counts = allgather(np.asarray([out.count], np.int64))[:, 0]
  for moments, dim in ((out.pool3, 2048), (out.spatial, SPATIAL_DIM)):
    total = moments.total if moments.count else np.zeros(dim)
    outer = moments.outer if moments.count else np.zeros((dim, dim))
    moments.total, moments.outer = allgather(total).sum(0), allgather(outer).sum(0)
    moments.count = int(counts.sum())
  for name in ("pool3_all", "logits"):
    mine = getattr(out, name)
    if mine is None:
      continue
    padded = np.zeros((int(counts.max()), mine.shape[1]), np.float32)
    padded[:len(mine)] = mine
    every = allgather(padded)
    setattr(out, name, np.concatenate([every[i, :c] for i, c in enumerate(counts)]))
  out.count = int(counts.sum())
