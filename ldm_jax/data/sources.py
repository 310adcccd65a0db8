"""Dataset names -> prepared TFDS builders.

`data.name` is one of the builders that ship with ldm_jax (`digits`, `photo_patches[/size]`,
`image_folder` with `data.folder`), the name of any registered TFDS dataset already prepared
in `data.data_dir` (`celeb_a_hq/256`, `imagenet2012`, ...), or the path of a prepared TFDS
dataset directory. Nothing is ever downloaded: our builders prepare from files on disk.
"""

import os
from typing import Callable

from absl import logging
import jax
import ml_collections
import tensorflow_datasets as tfds

from ldm_jax.data.builders import digits
from ldm_jax.data.builders import image_folder
from ldm_jax.data.builders import photo_patches

OFFLINE_BUILDERS = {
    "digits": digits.Digits,
    "photo_patches": photo_patches.PhotoPatches,
}
FOLDER_BUILDER = "image_folder"


def known_names() -> list[str]:
  return sorted([*OFFLINE_BUILDERS, FOLDER_BUILDER])


def _data_dir(data_config: ml_collections.ConfigDict) -> str:
  if data_config.get("data_dir"):
    return os.path.expanduser(data_config.data_dir)
  return tfds.core.constants.DATA_DIR


def _prepared(make_builder: Callable[[], tfds.core.DatasetBuilder]):
  """Returns a prepared builder from an offline one; with several processes, process 0 first.

  After the barrier the others find the data prepared (shared data_dir) or prepare their own
  copy (host-local data_dir). A builder is rebuilt after preparation so that its info (the
  splits) is read from what was written.
  """
  builder = make_builder()
  if builder.is_prepared():
    return builder
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      builder.download_and_prepare()
    multihost_utils.sync_global_devices(f"ldm_jax prepare {builder.name}")
    builder = make_builder()
    if builder.is_prepared():
      return builder
  builder.download_and_prepare()
  return make_builder()


def _folder_builder(data_config, data_dir: str) -> tfds.core.DatasetBuilder:
  folder = data_config.get("folder")
  if not folder:
    raise ValueError("data.name='image_folder' needs data.folder: the directory holding "
                     "your images (set --config.data.folder=/path/to/images).")
  root = image_folder.resolve(folder)
  prepared = os.path.join(data_dir, FOLDER_BUILDER, image_folder.folder_slug(root),
                          str(image_folder.ImageFolder.VERSION))
  if os.path.exists(os.path.join(prepared, "dataset_info.json")):
    builder = tfds.builder_from_directory(prepared)
    if not os.path.isdir(root):
      logging.warning("data.folder=%s is gone; reading its prepared copy in %s.", folder,
                      prepared)
      return builder
    if image_folder.scan_folder(root).fingerprint != builder.info.metadata["fingerprint"]:
      raise ValueError(
          f"data.folder={folder!r} changed (images or captions added, removed or modified) "
          f"since it was prepared into {prepared}. ldm_jax never overwrites a prepared "
          f"dataset: delete that directory to prepare the folder again, or point "
          f"data.data_dir somewhere else.")
    return builder
  config = image_folder.ImageFolderConfig(name=image_folder.folder_slug(root),
                                          scan=image_folder.scan_folder(root))
  return _prepared(lambda: image_folder.ImageFolder(config=config, data_dir=data_dir))


def _unknown(name: str, data_dir: str) -> ValueError:
  return ValueError(
      f"data.name={name!r} is not a dataset ldm_jax knows. It ships {known_names()} "
      f"(prepared offline); any registered TFDS dataset (e.g. 'celeb_a_hq/256', "
      f"'imagenet2012', 'oxford_flowers102') prepared in data.data_dir={data_dir!r} also "
      f"works, as does the path of a prepared TFDS dataset directory. For your own "
      f"pictures use --config.data.name=image_folder --config.data.folder=/path/to/images "
      f"(one subfolder per class, optional same-named .txt captions).")


def load_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns a prepared builder for `data_config.name`; raises ValueError otherwise."""
  name = data_config.name
  data_dir = _data_dir(data_config)
  if not name:
    raise _unknown(name, data_dir)
  if os.sep in name and os.path.isdir(os.path.expanduser(name)):
    try:
      return tfds.builder_from_directory(os.path.expanduser(name))
    except Exception as e:
      raise ValueError(f"data.name={name!r} is a directory but not a prepared TFDS dataset "
                       f"(expected dataset_info.json and features.json in it): {e}") from e
  base, _, variant = name.partition("/")
  if base == FOLDER_BUILDER:
    return _folder_builder(data_config, data_dir)
  if base in OFFLINE_BUILDERS:
    cls = OFFLINE_BUILDERS[base]
    variants = [c.name for c in cls.BUILDER_CONFIGS]
    if variant and variant not in variants:
      raise ValueError(f"data.name={name!r}: {base!r} has no variant {variant!r}; use one "
                       f"of {[f'{base}/{v}' for v in variants] or [base]}.")
    return _prepared(lambda: cls(config=variant or None, data_dir=data_dir))
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError as e:
    raise _unknown(name, data_dir) from e
  if not builder.is_prepared():
    raise ValueError(
        f"data.name={name!r} is a TFDS dataset, but it is not prepared in "
        f"data.data_dir={data_dir!r} (looked for {builder.data_dir}). ldm_jax never "
        f"downloads: prepare it once on a machine with access to its source, e.g. "
        f"`tfds build {base} --data_dir={data_dir}` (some datasets, like imagenet2012, "
        f"need their archives placed in the manual_dir first), then point data.data_dir "
        f"at that directory.")
  return builder
