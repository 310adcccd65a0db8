"""Per-example image preprocessing in TensorFlow: resize, crop, flip, scale to [-1, 1].

Every image of one example (the main image and any paired conditioning images) gets the same
geometry, so pairs stay aligned. Randomness is stateless, drawn from a per-example seed.
"""

import tensorflow as tf

CROPS = ("random", "center")
SMALL_IMAGE_POLICIES = ("error", "upscale", "skip")
RESIZE_METHODS = ("bicubic", "bilinear", "area", "lanczos3", "nearest")


def is_too_small(image: tf.Tensor, image_size: int) -> tf.Tensor:
  shape = tf.shape(image)
  return tf.minimum(shape[0], shape[1]) < image_size


def assert_large_enough(image: tf.Tensor, image_size: int, example_id: tf.Tensor):
  """Fails the pipeline, naming the example, when its smaller side is below image_size."""
  shape = tf.shape(image)
  message = tf.strings.format(
      "Image {} is {}x{} pixels, smaller than data.image_size={} on its shorter side. "
      "Set data.small_images='upscale' to upscale such images or 'skip' to drop them.",
      (example_id, shape[0], shape[1], image_size))
  return tf.debugging.Assert(tf.logical_not(is_too_small(image, image_size)), [message])


def _resize_smaller_side(image: tf.Tensor, image_size: int, method: str) -> tf.Tensor:
  """Scales so the shorter side equals image_size (no-op when it already does)."""
  image = tf.cast(image, tf.float32)
  shape = tf.shape(image)
  height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  scale = image_size / tf.minimum(height, width)
  new_height = tf.maximum(image_size, tf.cast(tf.round(height * scale), tf.int32))
  new_width = tf.maximum(image_size, tf.cast(tf.round(width * scale), tf.int32))

  def resize():
    resized = tf.image.resize(image, [new_height, new_width], method=method, antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)

  unchanged = tf.logical_and(tf.equal(new_height, shape[0]), tf.equal(new_width, shape[1]))
  return tf.cond(unchanged, lambda: image, resize)


def resize_crop_flip(images: list[tf.Tensor], *, image_size: int, crop: str,
                     random_flip: bool, resize_method: str | list[str],
                     seed: tf.Tensor | None) -> list[tf.Tensor]:
  """Resizes the shorter side to image_size, crops a square, maybe flips; float in [0, 255].

  `resize_method` is one method, or one per image ('nearest' for label maps). `seed` (shape
  [2], int) drives the random crop and flip; it is unused for a center crop without flips.
  """
  methods = [resize_method] * len(images) if isinstance(resize_method, str) else resize_method
  images = [_resize_smaller_side(im, image_size, m) for im, m in zip(images, methods)]
  shape = tf.shape(images[0])
  spare_h, spare_w = shape[0] - image_size, shape[1] - image_size
  if crop == "random":
    crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))[0]
    offsets = tf.random.stateless_uniform([2], crop_seed, maxval=2**30, dtype=tf.int32)
    top, left = offsets[0] % (spare_h + 1), offsets[1] % (spare_w + 1)
  elif crop == "center":
    top, left = spare_h // 2, spare_w // 2
  else:
    raise ValueError(f"data.crop={crop!r}: expected one of {CROPS}.")
  images = [tf.ensure_shape(im[top:top + image_size, left:left + image_size],
                            [image_size, image_size, im.shape[-1]]) for im in images]
  if random_flip:
    flip = flip_decision(seed, crop)
    images = [tf.cond(flip, lambda im=im: tf.reverse(im, axis=[1]), lambda im=im: im)
              for im in images]
  return images


def flip_decision(seed: tf.Tensor, crop: str) -> tf.Tensor:
  """Whether the example with this seed is flipped (shared with cached latents)."""
  flip_seed = seed
  if crop == "random":
    flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))[1]
  return tf.random.stateless_uniform([], flip_seed) < 0.5


def to_model_range(image: tf.Tensor, channels: int | None) -> tf.Tensor:
  """float [0, 255] HWC -> float32 [-1, 1], converting gray <-> RGB when asked."""
  if channels is not None and image.shape[-1] != channels:
    if channels == 3 and image.shape[-1] == 1:
      image = tf.image.grayscale_to_rgb(image)
    elif channels == 1 and image.shape[-1] == 3:
      image = tf.image.rgb_to_grayscale(image)
    else:
      raise ValueError(f"data.channels={channels}: cannot convert images with "
                       f"{image.shape[-1]} channels (only 1 <-> 3).")
  return tf.cast(image, tf.float32) / 127.5 - 1.0
