"""The offline builders against the data they wrap (scikit-learn, scikit-image, PIL)."""

import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
import pytest
from sklearn.datasets import load_digits
import skimage.data

from configs import common
from ldm_jax.data import sources
from ldm_jax.data.builders import digits
from ldm_jax.data.builders import image_folder
from ldm_jax.data.builders import photo_patches


def _examples(builder, split):
  return list(builder.as_dataset(split=split).as_numpy_iterator())


def test_digits_match_scikit_learn(data_dir):
  builder = sources.load_builder(common.data_config(name="digits", data_dir=data_dir))
  assert builder.info.splits["train"].num_examples == 1437
  assert builder.info.splits["test"].num_examples == 360
  reference = load_digits()
  test = _examples(builder, "test")
  assert sorted(int(e["label"]) for e in test) == sorted(reference.target[::5].tolist())
  # Every test image is one of the reference's every-fifth images, scaled 0..16 -> 0..255.
  expected = {np.round(im * 255 / 16).astype(np.uint8).tobytes(): int(label)
              for im, label in zip(reference.images[::5], reference.target[::5])}
  for example in test:
    assert expected[example["image"][..., 0].tobytes()] == example["label"]
    assert example["caption"].decode() == digits.caption_for(int(example["label"]))
    # Ink classes from the image itself: 0 where the value is 0, 2 where it is above 8/16.
    values = np.round(example["image"][..., 0].astype(np.float64) * 16 / 255)
    np.testing.assert_array_equal(example["segmentation"][..., 0],
                                  (values > 0).astype(int) + (values > 8).astype(int))


def test_photo_patches_are_exact_crops(data_dir):
  builder = sources.load_builder(common.data_config(name="photo_patches/64",
                                                    data_dir=data_dir))
  train, test = _examples(builder, "train"), _examples(builder, "test")
  names = builder.info.features["label"].names
  assert {names[e["label"]] for e in test} == {"coffee"}
  assert "coffee" not in {names[e["label"]] for e in train}
  coffee = skimage.data.coffee()
  assert len(test) == len(list(photo_patches.patch_offsets(*coffee.shape[:2], 64, 32)))
  for example in test[:5]:
    top, left = example["position"]
    np.testing.assert_array_equal(example["image"], coffee[top:top + 64, left:left + 64])


def test_photo_patches_unknown_variant(data_dir):
  with pytest.raises(ValueError, match=r"photo_patches/48.*'photo_patches/64'"):
    sources.load_builder(common.data_config(name="photo_patches/48", data_dir=data_dir))


def _write(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


@pytest.fixture
def photo_folder(tmp_path):
  """Two classes of scikit-image photos in several formats, one with a caption."""
  root = tmp_path / "my photos"
  _write(str(root / "people" / "astronaut.png"), skimage.data.astronaut())
  _write(str(root / "things" / "coffee.jpg"), skimage.data.coffee(), quality=95)
  _write(str(root / "things" / "cat.webp"), skimage.data.chelsea(), lossless=True)
  _write(str(root / "things" / "gray.png"), skimage.data.camera()[:200, :300])
  (root / "things" / "coffee.txt").write_text("a cup of coffee\n")
  (root / "notes.md").write_text("not an image")
  return root


def test_image_folder_labels_captions_formats(photo_folder, tmp_path):
  config = common.data_config(name="image_folder", folder=str(photo_folder),
                              data_dir=str(tmp_path / "tfds"))
  builder = sources.load_builder(config)
  assert builder.info.features["label"].names == ["people", "things"]
  examples = {e["filename"].decode(): e for e in _examples(builder, "train")}
  assert sorted(examples) == ["people/astronaut.png", "things/cat.webp",
                              "things/coffee.jpg", "things/gray.png"]
  assert examples["things/coffee.jpg"]["caption"] == b"a cup of coffee"
  assert examples["things/cat.webp"]["caption"] == b""
  assert examples["people/astronaut.png"]["label"] == 0
  # Lossless sources come back exactly; gray is stored as RGB.
  np.testing.assert_array_equal(examples["things/cat.webp"]["image"], skimage.data.chelsea())
  np.testing.assert_array_equal(examples["people/astronaut.png"]["image"],
                                skimage.data.astronaut())
  gray = examples["things/gray.png"]["image"]
  assert gray.shape == (200, 300, 3)
  np.testing.assert_array_equal(gray[..., 1], skimage.data.camera()[:200, :300])
  assert builder.info.metadata["min_side"] == 200
  # RGB JPEGs and PNGs without an EXIF rotation are stored as the files' own bytes (small,
  # and decoded by tf.data's JPEG decoder, not re-encoded as PNG).
  raw = {e["filename"].decode(): e["image"] for e in builder.as_dataset(
      split="train", decoders={"image": tfds.decode.SkipDecoding()}).as_numpy_iterator()}
  for name in ("things/coffee.jpg", "people/astronaut.png"):
    assert raw[name] == (photo_folder / name).read_bytes(), name
  # A second load reads the prepared copy.
  assert sources.load_builder(config).data_dir == builder.data_dir


def test_image_folder_applies_exif_orientation(tmp_path):
  picture = Image.fromarray(skimage.data.astronaut()[:100, :160])  # 160 wide, 100 high.
  exif = picture.getexif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
  (tmp_path / "flat").mkdir()
  picture.save(tmp_path / "flat" / "rotated.jpg", exif=exif)
  builder = sources.load_builder(common.data_config(
      name="image_folder", folder=str(tmp_path / "flat"), data_dir=str(tmp_path / "tfds")))
  (example,) = _examples(builder, "train")
  assert example["image"].shape == (160, 100, 3)
  assert "label" not in builder.info.features


def test_image_folder_changed_after_prepare_is_refused(photo_folder, tmp_path):
  config = common.data_config(name="image_folder", folder=str(photo_folder),
                              data_dir=str(tmp_path / "tfds"))
  prepared = sources.load_builder(config).data_dir
  _write(str(photo_folder / "people" / "rocket.png"), skimage.data.rocket())
  with pytest.raises(ValueError, match="changed.*never overwrites") as error:
    sources.load_builder(config)
  assert prepared in str(error.value)
  assert os.path.exists(os.path.join(prepared, "dataset_info.json"))


def test_image_folder_empty(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "readme.txt").write_text("nothing here")
  with pytest.raises(ValueError, match=r"empty.*holds no images.*\.jpg"):
    sources.load_builder(common.data_config(name="image_folder",
                                            folder=str(tmp_path / "empty"),
                                            data_dir=str(tmp_path / "tfds")))


def test_image_folder_missing_folder(tmp_path):
  with pytest.raises(ValueError, match="no such directory"):
    image_folder.scan_folder(str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="needs data.folder"):
    sources.load_builder(common.data_config(name="image_folder", data_dir=str(tmp_path)))


def test_image_folder_mixed_layout(tmp_path):
  _write(str(tmp_path / "mixed" / "top.png"), skimage.data.astronaut()[:32, :32])
  _write(str(tmp_path / "mixed" / "cls" / "inner.png"), skimage.data.astronaut()[:32, :32])
  with pytest.raises(ValueError, match="mixes images at its top level"):
    image_folder.scan_folder(str(tmp_path / "mixed"))


def test_image_folder_corrupt_image_is_named(tmp_path):
  folder = tmp_path / "broken"
  _write(str(folder / "good.png"), skimage.data.astronaut()[:64, :64])
  good = (folder / "good.png").read_bytes()
  (folder / "bad.png").write_bytes(good[: len(good) // 2])  # Truncated PNG.
  data_dir = tmp_path / "tfds"
  with pytest.raises(ValueError, match=r"Cannot read image file .*bad\.png.*truncated"):
    sources.load_builder(common.data_config(name="image_folder", folder=str(folder),
                                            data_dir=str(data_dir)))
  # Nothing half-prepared is left to be read later.
  prepared = os.path.join(str(data_dir), "image_folder",
                          image_folder.folder_slug(str(folder)), "1.0.0")
  assert not os.path.exists(os.path.join(prepared, "dataset_info.json"))
