"""Sets of uint8 images read in batches, for the sample-quality metrics.

  open_images(path) -> ImageSet    (count, side, channels, batches(batch_size))

A path is:
- a folder of .png / .jpg / .jpeg files (top level only, sorted by real path and read as RGB,
  as torch-fidelity does: the order decides its IS shuffle and KID subsets); a folder written
  by sample.py is read from its samples.npz, so that grid.png is not taken for a sample, and
  one of `sample.py --stream` from its samples_NxHxWxC.npz;
- an .npz with uint8 [N, H, W, C] images under `images` (sample.py's samples.npz) or `arr_0`
  (ADM's sample and reference batches), read a batch at a time from the archive, never whole.

`from_data(data_config, split)` reads a TFDS split as the training pipeline preprocesses it
(shorter side resized with `data.resize_method`, centre crop, no flip) and quantised to uint8
as samples are (ldm_jax.visualize.to_uint8): the reference of the papers' protocol.
"""

import dataclasses
import os
import zipfile
from typing import Callable, Iterator

import numpy as np

EXTENSIONS = ("png", "jpg", "jpeg")
NPZ_KEYS = ("images", "arr_0")


@dataclasses.dataclass
class ImageSet:
  name: str
  count: int  # Exact, but for a TFDS split with small_images='skip': at most.
  height: int
  width: int
  channels: int
  # batch_size -> uint8 [<= batch_size, H, W, C] batches, in the set's order.
  _batches: Callable[[int], Iterator[np.ndarray]]
  # (index, count) -> the index-th of `count` contiguous parts (one per JAX process).
  _shard: Callable[[int, int], "ImageSet"] | None = None
  split: str | None = None  # A TFDS split's name, as read.

  def batches(self, batch_size: int) -> Iterator[np.ndarray]:
    return self._batches(batch_size)

  def shard(self, index: int, count: int) -> "ImageSet":
    """Part `index` of `count` contiguous parts, in order: their concatenation is the set."""
    if count == 1:
      return self
    if self._shard is None:
      raise ValueError(f"{self.name} cannot be split over {count} processes.")
    return self._shard(index, count)


def _indexed(name, count, height, width, channels, read) -> ImageSet:
  """A set whose images can be read by position: read(start, stop) -> uint8 batch."""

  def batches(batch_size):
    for start in range(0, count, batch_size):
      yield read(start, min(start + batch_size, count))

  def shard(index, parts):
    start, stop = index * count // parts, (index + 1) * count // parts
    return _indexed(f"{name} (part {index + 1} of {parts})", stop - start, height, width,
                    channels, lambda a, b: read(start + a, start + b))
  return ImageSet(name, count, height, width, channels, batches, shard)


def mapped(images: ImageSet, fn, name: str) -> ImageSet:
  """The set of fn(batch) (uint8 -> uint8 of the same shape) over `images`' batches."""
  return ImageSet(name, images.count, images.height, images.width, images.channels,
                  lambda batch_size: (fn(b) for b in images.batches(batch_size)),
                  lambda index, parts: mapped(images.shard(index, parts), fn,
                                              f"{name} (part {index + 1} of {parts})"))


def _folder(path: str) -> ImageSet:
  if os.path.isfile(os.path.join(path, "plan.json")):  # sample.py --stream's folder.
    done = sorted(f for f in os.listdir(path) if f.startswith("samples_") and f.endswith(".npz"))
    if not done:
      raise ValueError(f"{path} is an unfinished `sample.py --stream` run (no samples_*.npz "
                       f"yet): run it again to finish it.")
    return _npz(os.path.join(path, done[0]))
  if os.path.isfile(os.path.join(path, "samples.npz")) and os.path.isfile(
      os.path.join(path, "settings.json")):
    return _npz(os.path.join(path, "samples.npz"))
  from PIL import Image  # pylint: disable=import-outside-toplevel
  files = sorted(os.path.realpath(os.path.join(path, f)) for f in os.listdir(path)
                 if f.rsplit(".", 1)[-1].lower() in EXTENSIONS and f.count(".")
                 and os.path.isfile(os.path.join(path, f)))
  if not files:
    raise ValueError(f"{path}: no .png, .jpg or .jpeg files at its top level.")
  with Image.open(files[0]) as first:
    width, height = first.size

  def read(start, stop):
    out = np.empty((stop - start, height, width, 3), np.uint8)
    for i, name in enumerate(files[start:stop]):
      with Image.open(name) as image:
        if image.size != (width, height):
          raise ValueError(f"{name} is {image.size[0]}x{image.size[1]} px; {files[0]} and the "
                           f"others before it are {width}x{height} px: one size per set.")
        out[i] = np.asarray(image.convert("RGB"))
    return out
  return _indexed(path, len(files), height, width, 3, read)


def _npz(path: str) -> ImageSet:
  try:
    archive = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path} is not an .npz archive ({e}).") from e
  with archive:
    names = {n[:-4]: n for n in archive.namelist() if n.endswith(".npy")}
  key = next((k for k in NPZ_KEYS if k in names), None)
  if key is None:
    raise ValueError(f"{path} holds {sorted(names)}; expected images under one of "
                     f"{NPZ_KEYS} (sample.py's samples.npz, ADM's batches).")
  with zipfile.ZipFile(path) as archive, archive.open(names[key]) as member:
    version = np.lib.format.read_magic(member)
    header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
              np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = header(member)
    offset = member.tell()
  if len(shape) != 4 or shape[-1] not in (1, 3) or dtype != np.uint8 or fortran:
    raise ValueError(f"{path}: {key} is {dtype} {shape}{' (Fortran order)' if fortran else ''}"
                     f"; expected uint8 [N, H, W, 1 or 3] images.")
  item = int(np.prod(shape[1:]))

  def read(start, stop):
    # Members are read through the archive (stored or compressed): seek, then one batch.
    with zipfile.ZipFile(path) as archive, archive.open(names[key]) as member:
      member.seek(offset + start * item)
      data = member.read((stop - start) * item)
    return np.frombuffer(data, np.uint8).reshape((stop - start,) + tuple(shape[1:]))
  return _indexed(path, int(shape[0]), int(shape[1]), int(shape[2]), int(shape[3]), read)


def open_images(path: str) -> ImageSet:
  if os.path.isdir(path):
    return _folder(path)
  if os.path.isfile(path) and path.endswith(".npz"):
    return _npz(path)
  raise FileNotFoundError(f"{path}: expected a folder of images or an .npz of uint8 images.")


def from_data(data_config, split: str) -> ImageSet:
  """The images of a TFDS `split` as the evaluation pipeline gives them (see the module
  docstring), uint8; `data_config` is a run's `data` block (data.image_size, resize_method,
  small_images, channels, data_dir apply). Examples that data.small_images='skip' drops are
  left out of the set (its `count` is then an upper bound)."""
  # pylint: disable=import-outside-toplevel
  from ldm_jax import visualize
  from ldm_jax.data import pipeline
  from ldm_jax.data import sources
  import tensorflow_datasets as tfds
  data_config = data_config.copy_and_resolve_references()
  with data_config.unlocked():
    data_config.update(latent_key=None, degradation=None, label_key=None, caption_key=None,
                       cond_image_keys=(), label_map_keys=())
  pipeline.validate(data_config)
  builder = sources.load_builder(data_config)
  try:
    builder.info.splits[split]  # pylint: disable=pointless-statement
  except (KeyError, ValueError) as e:
    raise ValueError(f"split={split!r} is not a split of dataset {builder.name!r}; it has "
                     f"{sorted(builder.info.splits.keys())}.") from e
  features = builder.info.features
  if data_config.image_key not in features:
    raise ValueError(f"data.image_key={data_config.image_key!r}: dataset {builder.name!r} has "
                     f"no such feature; it has {sorted(features.keys())}.")
  channels = data_config.channels or features[data_config.image_key].shape[-1]
  size = data_config.image_size

  def part(index, parts):
    local = tfds.split_for_jax_process(split, process_index=index, process_count=parts)

    def batches(batch_size):
      dataset = pipeline.create_dataset(data_config, builder=builder, split=split,
                                        train=False, seed=0, batch_size=batch_size,
                                        process_index=index, process_count=parts)
      for batch in dataset.as_numpy_iterator():
        images = batch["image"][batch["mask"]]
        if len(images):
          yield visualize.to_uint8(images)
    name = f"tfds:{data_config.name}[{split}] at {size} px" + (
        f" (part {index + 1} of {parts})" if parts > 1 else "")
    return ImageSet(name, builder.info.splits[local].num_examples, size, size, channels,
                    batches, part, split)
  return part(0, 1)


def _rebatched(parts: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
  for part in parts:
    for start in range(0, len(part), batch_size):
      yield part[start:start + batch_size]


def from_sampler(model, num_samples: int, /, *, seed: int = 0, batch_size: int | None = None,
                 class_label=None, **settings) -> ImageSet:
  """`num_samples` images drawn by a sampling.Sampler as `sample.py --stream` draws them
  (ldm_jax/sampling/bulk.py: unconditional or class-conditional, classes spread evenly),
  batch by batch, never all held."""
  from ldm_jax.sampling import bulk  # pylint: disable=import-outside-toplevel
  labels = bulk.labels_for(model, num_samples, class_label)
  draw_batch = model.batch_size_for(batch_size, num_samples)
  model.settings(**settings)  # Checked now, not after the first batch.
  total = -(-num_samples // draw_batch)

  def part(index, parts):
    numbers = range(index * total // parts, (index + 1) * total // parts)
    count = min(numbers.stop * draw_batch, num_samples) - numbers.start * draw_batch

    def batches(step):
      drawn = bulk.draw(model, labels, num_samples, draw_batch, numbers, seed=seed,
                        **settings)
      return _rebatched((images for _, images, _ in drawn), step)
    name = f"{num_samples} samples of {model.source}" + (
        f" (part {index + 1} of {parts})" if parts > 1 else "")
    side = int(model.config.data.image_size)
    return ImageSet(name, max(count, 0), side, side, model.image_channels, batches, part)
  return part(0, 1)

