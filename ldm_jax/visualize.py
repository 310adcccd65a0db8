"""Image grids and PNG files from batches in [-1, 1] (NHWC)."""

import os

import einops
import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255] (values outside are clipped)."""
  images = np.asarray(images, np.float32)
  return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def make_grid(images: np.ndarray, columns: int | None = None, padding: int = 1) -> np.ndarray:
  """NHWC images -> one HWC uint8 grid, row-major, `padding` black pixels between tiles."""
  images = to_uint8(images)
  if images.ndim != 4:
    raise ValueError(f"make_grid expects NHWC images, got shape {images.shape}.")
  count = images.shape[0]
  columns = columns or int(np.ceil(np.sqrt(count)))
  rows = -(-count // columns)
  pad_count = rows * columns - count
  images = np.pad(images, ((0, pad_count), (padding, padding), (padding, padding), (0, 0)))
  return einops.rearrange(images, "(r c) h w ch -> (r h) (c w) ch", r=rows, c=columns)


def save_png(image: np.ndarray, path: str, scale: int = 1) -> None:
  """Writes an HWC uint8 image; gray (C=1) is written as 'L'; `scale` enlarges pixels."""
  if image.shape[-1] == 1:
    image = image[..., 0]
  picture = Image.fromarray(image)
  if scale > 1:
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  picture.save(path)
