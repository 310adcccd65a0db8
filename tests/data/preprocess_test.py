"""Geometry of the per-example preprocessing."""

import numpy as np
import pytest
import tensorflow as tf

from ldm_jax.data import preprocess


def _run(images, **kwargs):
  defaults = dict(image_size=4, crop="center", random_flip=False, resize_method="bilinear",
                  seed=tf.constant([1, 2], tf.int64))
  return [t.numpy() for t in preprocess.resize_crop_flip(
      [tf.constant(im) for im in images], **{**defaults, **kwargs})]


def test_native_size_passes_through_exactly():
  image = np.random.default_rng(0).integers(0, 256, (4, 4, 3), np.uint8)
  (out,) = _run([image], resize_method="bicubic")
  np.testing.assert_array_equal(out, image.astype(np.float32))


def test_center_crop_of_wider_image_without_resize():
  image = np.arange(4 * 10, dtype=np.uint8).reshape(4, 10, 1)
  (out,) = _run([image])
  np.testing.assert_array_equal(out[..., 0], image[:, 3:7, 0])  # (10 - 4) // 2 = 3


def test_shorter_side_is_resized_to_image_size():
  image = np.full((8, 20, 3), 200, np.uint8)  # 8x20 -> 4x10 -> center 4x4
  (out,) = _run([image])
  assert out.shape == (4, 4, 3)
  np.testing.assert_allclose(out, 200.0, atol=1e-3)


def test_random_crop_and_flip_are_shared_by_paired_images_and_seeded():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (9, 13, 3), np.uint8)
  outs = {}
  for seed in range(8):
    a, b = _run([image, image[..., :1]], crop="random", random_flip=True,
                seed=tf.constant([seed, 0], tf.int64))
    np.testing.assert_array_equal(a[..., :1], b)
    outs[seed] = a
  again, _ = _run([image, image[..., :1]], crop="random", random_flip=True,
                  seed=tf.constant([3, 0], tf.int64))
  np.testing.assert_array_equal(again, outs[3])
  assert len({o.tobytes() for o in outs.values()}) > 1
  # Every crop is a (possibly flipped) 4x4 window of a 4x5 resize of the source.
  resized = tf.image.resize(image.astype(np.float32), [4, 6], antialias=True).numpy()
  windows = [resized[:, x:x + 4] for x in range(3)]
  windows += [w[:, ::-1] for w in windows]
  for out in outs.values():
    assert any(np.allclose(out, np.clip(w, 0, 255), atol=1e-4) for w in windows)


def test_model_range_and_channel_conversion():
  image = tf.constant([[[0.0], [255.0]]])
  np.testing.assert_allclose(preprocess.to_model_range(image, None).numpy()[..., 0],
                             [[-1.0, 1.0]])
  assert preprocess.to_model_range(image, 3).shape == (1, 2, 3)
  with pytest.raises(ValueError, match="data.channels=3"):
    preprocess.to_model_range(tf.zeros([1, 1, 2]), 3)
