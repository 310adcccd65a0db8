"""scikit-learn's bundled handwritten digits (UCI optdigits test set) as a TFDS dataset.

1,797 gray 8x8 images, a class label, a text caption and a 3-class segmentation of the ink
(0 background, 1 faint strokes: values 1..8 of 16, 2 strong strokes: 9..16), a small paired
label map for semantic-synthesis tests. The train/test split is fixed by index (every fifth
image is test) so it never changes across library versions.
"""

import numpy as np
import tensorflow_datasets as tfds

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine")
TEST_EVERY = 5


def caption_for(label: int) -> str:
  return f"a handwritten digit {NUMBER_WORDS[label]}"


def ink_classes(values: np.ndarray) -> np.ndarray:
  """uint8 classes of digit pixel values 0..16: 0 (none), 1 (1..8), 2 (9..16)."""
  values = np.asarray(values)
  return ((values > 0).astype(np.uint8) + (values > 8).astype(np.uint8))


class Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Handwritten digits from scikit-learn, with captions."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Ink segmentation maps."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            "scikit-learn's bundled 8x8 handwritten digits; pixel values 0..16 scaled to "
            "0..255. Test split = every 5th image by index."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(names=list(NUMBER_WORDS)),
            "caption": tfds.features.Text(),
            "segmentation": tfds.features.Image(shape=(8, 8, 1)),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ship inside scikit-learn.
    return {"train": self._generate_examples(test=False),
            "test": self._generate_examples(test=True)}

  def _generate_examples(self, test: bool):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    # Values are integers 0..16; map them onto the full 8-bit range.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    segmentations = ink_classes(digits.images)[..., None]
    for index, (image, label) in enumerate(zip(images, digits.target)):
      if (index % TEST_EVERY == 0) != test:
        continue
      yield index, {"image": image, "label": int(label), "caption": caption_for(int(label)),
                    "segmentation": segmentations[index]}
