"""Fixed, deterministic square crops of scikit-image's bundled colour photographs.

Real natural-image patches for autoencoder tests, offline. Whole photos are held out for the
test split, so test patches come from scenes the training split never saw.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

# name -> (loader in skimage.data, caption, split)
PHOTOS = {
    "astronaut": ("astronaut", "a portrait of an astronaut", "train"),
    "chelsea": ("chelsea", "a photo of a cat", "train"),
    "rocket": ("rocket", "a rocket on its launch pad", "train"),
    "motorcycle": ("stereo_motorcycle", "a motorcycle in a garage", "train"),
    "hubble_deep_field": ("hubble_deep_field", "galaxies in deep space", "train"),
    "immunohistochemistry": ("immunohistochemistry", "stained tissue under a microscope",
                             "train"),
    "coffee": ("coffee", "a cup of coffee on a table", "test"),
}


def load_photo(name: str) -> np.ndarray:
  """Returns one bundled photo as uint8 HxWx3."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  loaded = getattr(skimage.data, PHOTOS[name][0])()
  if name == "motorcycle":  # stereo_motorcycle() -> (left, right, disparity)
    loaded = loaded[0]
  return np.asarray(loaded)[..., :3]


def patch_offsets(height: int, width: int, size: int, stride: int):
  """Top-left corners of a regular grid of size x size crops that fit inside the photo."""
  for top in range(0, height - size + 1, stride):
    for left in range(0, width - size + 1, stride):
      yield top, left


@dataclasses.dataclass
class PhotoPatchesConfig(tfds.core.BuilderConfig):
  patch_size: int = 64
  stride: int = 32


class PhotoPatches(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Overlapping square patches of scikit-image's colour photos."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      PhotoPatchesConfig(name=str(size), patch_size=size, stride=size // 2,
                         description=f"{size}x{size} patches, stride {size // 2}.")
      for size in (64, 32, 128)
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.patch_size
    return self.dataset_info_from_configs(
        description=("Deterministic crops of scikit-image's bundled colour photos; the "
                     "'coffee' photo is held out as the test split."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "label": tfds.features.ClassLabel(names=list(PHOTOS)),
            "caption": tfds.features.Text(),
            "position": tfds.features.Tensor(shape=(2,), dtype=np.int32),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The photos ship inside scikit-image.
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split: str):
    size, stride = self.builder_config.patch_size, self.builder_config.stride
    for name, (_, caption, photo_split) in PHOTOS.items():
      if photo_split != split:
        continue
      photo = load_photo(name)
      for top, left in patch_offsets(photo.shape[0], photo.shape[1], size, stride):
        yield f"{name}_{top}_{left}", {
            "image": photo[top:top + size, left:left + size],
            "label": name,
            "caption": caption,
            "position": np.array([top, left], np.int32),
        }
