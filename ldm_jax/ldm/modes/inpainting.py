"""conditioning.type='inpainting': a mask (1 = hole) at latent size and the latents of the
masked image, concatenated in that order (the CompVis / Stable Diffusion inpainting layout).
Training draws 1..3 random boxes per image."""

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.ldm.modes import base


def box_masks(key, batch: int, size: int, *, max_boxes: int = 3, min_frac: float = 0.1,
              max_frac: float = 0.5):
  """[batch, size, size, 1] float masks, 1 inside 1..max_boxes random rectangles (holes)."""
  k_n, k_size, k_pos = jax.random.split(key, 3)
  count = jax.random.randint(k_n, (batch, 1), 1, max_boxes + 1)
  sides = jax.random.uniform(k_size, (batch, max_boxes, 2), minval=min_frac,
                             maxval=max_frac) * size
  corner = jax.random.uniform(k_pos, (batch, max_boxes, 2)) * (size - sides)
  grid = jnp.arange(size, dtype=jnp.float32) + 0.5
  inside_y = (grid[None, None, :] >= corner[..., 0:1]) & (
      grid[None, None, :] < corner[..., 0:1] + sides[..., 0:1])
  inside_x = (grid[None, None, :] >= corner[..., 1:2]) & (
      grid[None, None, :] < corner[..., 1:2] + sides[..., 1:2])
  boxes = inside_y[:, :, :, None] & inside_x[:, :, None, :]  # [B, boxes, H, W]
  used = jnp.arange(max_boxes)[None, :] < count
  return jnp.any(boxes & used[:, :, None, None], axis=1)[..., None].astype(jnp.float32)


def read_mask(value, image: np.ndarray) -> np.ndarray:
  """A user's mask -> [K, H, W, 1] float {0, 1}, 1 = hole (1 / True / 255)."""
  array = np.asarray(value)
  if array.ndim == 4 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 3 and array.shape[-1] == 1 and array.shape[0] != 1:
    array = array[..., 0]
  if array.ndim == 2:
    array = array[None]
  if array.ndim != 3 or array.shape[1:] != image.shape[1:3]:
    raise ValueError(f"mask: shape {np.shape(value)}; expected the image's {image.shape[1]}x"
                     f"{image.shape[2]} ([H, W], [H, W, 1] or [K, H, W]).")
  if array.shape[0] not in (1, image.shape[0]):
    raise ValueError(f"mask: {array.shape[0]} masks for {image.shape[0]} images.")
  scale = 255.0 if array.dtype == np.uint8 else 1.0
  hole = (array.astype(np.float32) / scale > 0.5).astype(np.float32)
  return np.broadcast_to(hole, (image.shape[0],) + hole.shape[1:])[..., None]


class Inpainting(base.Mode):
  NAME = "inpainting"
  CONCAT = True
  SAMPLE_INPUTS = ("image", "mask")

  def setup(self, config) -> None:
    self.concat_channels = self.first_stage.channels + 1

  def fields(self, batch, key):
    image = batch["image"]
    return {"mask": box_masks(key, image.shape[0], image.shape[1]), "image": image}

  def concat_from(self, fs_params, fields, keep, side):
    mask, image = fields["mask"].astype(jnp.float32), fields["image"].astype(jnp.float32)
    masked = image * (1.0 - mask)
    c = jnp.concatenate([base.area_resize(mask, side) if side != mask.shape[1] else mask,
                         self.first_stage.encode(fs_params, masked)], axis=-1)
    return self._finish_concat(c, keep)

  @property
  def input_channels(self):
    return self.image_channels

  def read(self, given, image_size):
    images = base.read_images(self.image_input(given, "image"), "image", self.input_channels)
    if given.get("mask") is None:
      raise ValueError("The model inpaints: give mask (1 = the hole to fill) with image.")
    return base.Request({"image": images, "mask": read_mask(given["mask"], images)},
                        list(range(len(images))), images.shape[1], "image", len(images))

  def show(self, fields, truth):
    return np.asarray(truth, np.float32) * (1.0 - np.asarray(fields["mask"]))
