"""conditioning.type='low_res': super-resolution (LDM-SR / LDM-BSR).

The low-resolution image at latent size is concatenated to the latents: the image itself,
downsampled (bicubic, antialiased) in the step, or with `conditioning.key='low_res'` the
pipeline's BSRGAN-degraded image (`data.degradation`), resized to the latent size where its
factor differs.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.ldm.modes import base


class LowRes(base.Mode):
  NAME = "low_res"
  CONCAT = True
  SAMPLE_INPUTS = ("cond_image",)

  def setup(self, config) -> None:
    if self.key is not None and (self.key != "low_res" or not config.data.get("degradation")):
      raise ValueError(f"conditioning.key={self.key!r} for type 'low_res': expected None "
                       f"(bicubic downsampling in the step) or 'low_res' with "
                       f"data.degradation set (the pipeline's degraded image).")
    self.concat_channels = self.image_channels

  @property
  def batch_keys(self):
    return (self.key,) if self.key else ()

  def fields(self, batch, key):
    del key
    return {"low_res": batch[self.key] if self.key else batch["image"]}

  def low_res(self, low, side: int):
    """[B, side, side, C] in [-1, 1], bicubic-resized to the latent side where it differs."""
    low = jnp.asarray(low, jnp.float32)
    if low.shape[1] != side or low.shape[2] != side:
      low = jax.image.resize(low, (low.shape[0], side, side, low.shape[-1]), "bicubic",
                             antialias=True)
    return jnp.clip(low, -1.0, 1.0)

  def concat_from(self, fs_params, fields, keep, side):
    del fs_params
    return self._finish_concat(self.low_res(fields["low_res"], side), keep)

  @property
  def input_channels(self):
    return self.concat_channels

  def read(self, given, image_size):
    images = base.read_images(self.image_input(given, "cond_image"), "cond_image",
                              self.input_channels)
    factor = (int(self.config.data.degradation_factor) if self.key else
              self.first_stage.downsample)
    return base.Request({"low_res": images}, list(range(len(images))),
                        images.shape[1] * factor,
                        f"cond_image ({images.shape[1]} px x {factor})", len(images))

  def show(self, fields, truth):
    like = np.asarray(truth, np.float32)
    low = self.low_res(fields["low_res"], like.shape[1] // self.first_stage.downsample)
    return np.asarray(jax.image.resize(low, like.shape, "nearest"))
