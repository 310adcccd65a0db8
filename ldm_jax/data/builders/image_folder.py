"""A user's folder of images as a TFDS dataset, prepared once into the TFDS data_dir.

Layout: images (jpg/jpeg/png/webp) directly in the folder (no labels), or one subfolder per
class (label = subfolder name; images may sit deeper inside it). `photo.jpg` gets its caption
from `photo.txt` when that file exists. The prepared copy lives under
`<data_dir>/image_folder/<folder name>_<path hash>/` and remembers a fingerprint of the
folder, so a changed folder is reported instead of being read stale or overwritten.
"""

import dataclasses
import hashlib
import io
import os
import re

import numpy as np
import tensorflow_datasets as tfds

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# RGB files in these formats are stored as they are; anything else is re-encoded as PNG.
_KEEP_ENCODED = ("JPEG", "PNG")  # Stored as the file's bytes (RGB, not rotated by EXIF).
_EXIF_ORIENTATION = 0x0112


@dataclasses.dataclass(frozen=True)
class FolderScan:
  """What a folder holds: image paths relative to `root`, class names, captions."""
  root: str
  files: tuple[str, ...]
  class_names: tuple[str, ...]
  has_captions: bool
  fingerprint: str


def resolve(folder: str) -> str:
  return os.path.abspath(os.path.expanduser(folder))


def folder_slug(root: str) -> str:
  """The prepared copy's config name: readable folder name + hash of its absolute path."""
  base = re.sub(r"[^a-z0-9]+", "_", os.path.basename(root).lower()).strip("_")
  digest = hashlib.sha1(root.encode()).hexdigest()[:10]
  return f"{base or 'folder'}_{digest}"


def _is_hidden(name: str) -> bool:
  return name.startswith(".")


def scan_folder(folder: str) -> FolderScan:
  """Lists the images of `folder`; raises ValueError naming what is wrong with it."""
  root = resolve(folder)
  if not os.path.isdir(root):
    raise ValueError(f"data.folder={folder!r}: no such directory ({root}).")
  files, other, digest = [], 0, hashlib.sha256()
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
    for name in sorted(filenames):
      if _is_hidden(name):
        continue
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, root)
      is_image = name.lower().endswith(IMAGE_EXTENSIONS)
      if is_image:
        files.append(rel)
      elif not name.lower().endswith(".txt"):
        other += 1
        continue
      stat = os.stat(path)
      digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
  if not files:
    raise ValueError(
        f"data.folder={folder!r} holds no images: expected files ending in "
        f"{', '.join(IMAGE_EXTENSIONS)} (case-insensitive) in the folder or in one "
        f"subfolder per class; found {other} other file(s).")
  at_top = [f for f in files if os.sep not in f]
  in_sub = [f for f in files if os.sep in f]
  if at_top and in_sub:
    raise ValueError(
        f"data.folder={folder!r} mixes images at its top level ({at_top[0]!r}, ...) with "
        f"images in subfolders ({in_sub[0]!r}, ...). Use either a flat folder (no labels) "
        f"or one subfolder per class for every image.")
  class_names = tuple(sorted({f.split(os.sep, 1)[0] for f in in_sub}))
  has_captions = any(os.path.exists(os.path.join(root, os.path.splitext(f)[0] + ".txt"))
                     for f in files)
  return FolderScan(root=root, files=tuple(files), class_names=class_names,
                    has_captions=has_captions, fingerprint=digest.hexdigest())


def read_image(path: str):
  """Returns what TFDS's Image feature stores for `path`: encoded bytes or an RGB array.

  Raises ValueError naming the file when it cannot be decoded.
  """
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top
  try:
    with open(path, "rb") as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as image:
      image_format = image.format
      image.load()  # A full decode: a broken file fails here.
      # Orientation 1 (or none) displays the pixels as stored. (exif_transpose returns a
      # copy either way, so its identity cannot tell: a JPEG compared that way was always
      # re-encoded as a 5x larger PNG, slower to decode, 2026-12-04.)
      rotated = image.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1)
      if image_format in _KEEP_ENCODED and image.mode == "RGB" and not rotated:
        return data, (image.height, image.width)
      oriented = ImageOps.exif_transpose(image) if rotated else image
      return np.asarray(oriented.convert("RGB")), (oriented.height, oriented.width)
  except Exception as e:  # PIL raises many types for broken files.
    raise ValueError(f"Cannot read image file {path}: {type(e).__name__}: {e}. Fix or "
                     f"remove this file, then run again.") from e


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
  scan: FolderScan | None = None


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images from a local folder; build it with `config=ImageFolderConfig(scan=...)`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    scan = self.builder_config.scan
    features = {"image": tfds.features.Image(shape=(None, None, 3)),
                "filename": tfds.features.Text()}
    if scan.class_names:
      features["label"] = tfds.features.ClassLabel(names=list(scan.class_names))
    if scan.has_captions:
      features["caption"] = tfds.features.Text()
    return self.dataset_info_from_configs(
        description=f"Images from the folder {scan.root}.",
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(folder=scan.root, fingerprint=scan.fingerprint),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    scan = self.builder_config.scan
    min_side = None
    for rel in scan.files:
      path = os.path.join(scan.root, rel)
      image, (height, width) = read_image(path)
      min_side = min(height, width) if min_side is None else min(min_side, height, width)
      example = {"image": image, "filename": rel}
      if scan.class_names:
        example["label"] = rel.split(os.sep, 1)[0]
      if scan.has_captions:
        caption_path = os.path.splitext(path)[0] + ".txt"
        caption = ""
        if os.path.exists(caption_path):
          with open(caption_path, encoding="utf-8") as f:
            caption = f.read().strip()
        example["caption"] = caption
      yield rel, example
    # Known once every image has been read; saved with the dataset's metadata so the
    # pipeline can refuse an image_size the folder cannot provide before it starts.
    self.info.metadata["min_side"] = min_side
