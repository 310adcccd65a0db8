"""Sets of uint8 images read in batches, for the sample-quality metrics.

  open_images(path) -> ImageSet    (count, side, channels, batches(batch_size))

A path is:
- a folder of .png / .jpg / .jpeg files (top level only, sorted by real path and read as RGB,
  as torch-fidelity does: the order decides its IS shuffle and KID subsets); a folder written
  by sample.py is read from its samples.npz, so that grid.png is not taken for a sample;
- an .npz with uint8 [N, H, W, C] images under `images` (sample.py's samples.npz) or `arr_0`
  (ADM's sample and reference batches), read a batch at a time from the archive, never whole.
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
  count: int
  height: int
  width: int
  channels: int
  _read: Callable[[int, int], np.ndarray]  # (start, stop) -> uint8 [stop - start, H, W, C]

  def batches(self, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, self.count, batch_size):
      yield self._read(start, min(start + batch_size, self.count))


def _folder(path: str) -> ImageSet:
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
  return ImageSet(path, len(files), height, width, 3, read)


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
  return ImageSet(path, int(shape[0]), int(shape[1]), int(shape[2]), int(shape[3]), read)


def open_images(path: str) -> ImageSet:
  if os.path.isdir(path):
    return _folder(path)
  if os.path.isfile(path) and path.endswith(".npz"):
    return _npz(path)
  raise FileNotFoundError(f"{path}: expected a folder of images or an .npz of uint8 images.")
