"""conditioning.type='image': a paired image `conditioning.key` (RGB -> thermal, ...),
through the frozen autoencoder (`encode_condition=True`) or as resized pixels, concatenated."""

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.ldm.modes import base


class PairedImage(base.KeyedMode):
  NAME = "image"
  CONCAT = True
  SAMPLE_INPUTS = ("cond_image",)

  def setup(self, config) -> None:
    super().setup(config)
    self.encode = bool(self.block.get("encode_condition", True))
    self.concat_channels = self.first_stage.channels if self.encode else int(
        self.block.get("condition_channels") or self.image_channels)

  def concat_from(self, fs_params, fields, keep, side):
    cond = fields[self.key].astype(jnp.float32)
    if self.encode:
      c = self.first_stage.encode(fs_params, cond)
    else:
      c = jax.image.resize(cond, (cond.shape[0], side, side, cond.shape[-1]), "bicubic",
                           antialias=True)
    return self._finish_concat(c, keep)

  @property
  def input_channels(self):
    return self.image_channels if self.encode else self.concat_channels

  def read(self, given, image_size):
    images = base.read_images(self.image_input(given, "cond_image"), "cond_image",
                              self.input_channels)
    return base.Request({self.key: images}, list(range(len(images))), images.shape[1],
                        "cond_image", len(images))

  def show(self, fields, truth):
    return base.as_gray_row(fields[self.key], np.asarray(truth, np.float32))
