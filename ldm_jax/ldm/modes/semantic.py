"""conditioning.type='semantic': an integer class map `conditioning.key` -> one-hot over
`num_semantic_classes`, area-averaged to latent size, concatenated."""

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.ldm.modes import base


def read_map(value, num_classes: int) -> np.ndarray:
  """A user's map -> [K, H, W] int32 class ids."""
  array = np.asarray(value)
  if array.ndim == 4 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    array = array[None]
  if array.ndim != 3 or array.shape[1] != array.shape[2]:
    raise ValueError(f"semantic_map: shape {array.shape}; expected a square [H, W] or "
                     f"[K, H, W] integer map.")
  if not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"semantic_map: dtype {array.dtype}; expected integer class ids.")
  if array.min() < 0 or array.max() >= num_classes:
    raise ValueError(f"semantic_map: class ids in [{array.min()}, {array.max()}]; the model "
                     f"has {num_classes} classes (0 .. {num_classes - 1}).")
  return array.astype(np.int32)


class Semantic(base.KeyedMode):
  NAME = "semantic"
  CONCAT = True
  SAMPLE_INPUTS = ("semantic_map",)

  def setup(self, config) -> None:
    super().setup(config)
    self.concat_channels = int(self.block.get("num_semantic_classes") or 0)
    if self.concat_channels < 2:
      raise ValueError("conditioning.type='semantic' needs conditioning.num_semantic_classes "
                       ">= 2.")

  def concat_from(self, fs_params, fields, keep, side):
    del fs_params
    labels = fields[self.key]
    labels = labels[..., 0] if labels.ndim == 4 else labels
    onehot = jax.nn.one_hot(labels, self.concat_channels, dtype=jnp.float32)
    return self._finish_concat(base.area_resize(onehot, side), keep)

  def read(self, given, image_size):
    maps = read_map(self.image_input(given, "semantic_map"), self.concat_channels)
    return base.Request({self.key: maps}, list(range(len(maps))), maps.shape[1],
                        "semantic_map", len(maps))

  def show(self, fields, truth):
    cond = np.asarray(fields[self.key], np.float32)
    cond = cond[..., :1] if cond.ndim == 4 else cond[..., None]
    cond = cond / max(self.concat_channels - 1, 1) * 2.0 - 1.0
    return base.as_gray_row(cond, np.asarray(truth, np.float32))
