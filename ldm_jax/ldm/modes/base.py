"""What every conditioning mode provides, and the checks they share.

A mode turns its condition into the network's inputs `{'concat', 'context', 'y'}` (None
where unused) and knows, for its one kind of condition:
  training      `batch_keys` (the batch fields it reads), `host_fields` (fields made on the
                host, e.g. caption -> token ids), `fields(batch, key)` (the explicit
                condition of a training batch), `init` (a trained conditioner's parameters);
  guidance      `keep` flags: a dropped example gets the null condition (the null class, the
                empty caption, zeros), with probability `conditioning.dropout` in training
                and for every example of the unconditional half at sampling;
  sampling      `SAMPLE_INPUTS` (the keywords of `Sampler.sample` it takes) and `read`
                (a user's values -> checked fields, one row per condition);
  sample grids  `grid` (the conditions of the training run's grid) and `show` (the
                condition drawn as an image row, for concatenation modes).
Explicit fields are what both training and sampling hand to `network_inputs`: `label`,
`tokens`, `low_res`, `image` + `mask`, or the condition under `conditioning.key`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ldm_jax.models import factory
from ldm_jax.models import networks


@dataclasses.dataclass
class Request:
  """A user's conditions, read and checked: K conditions, fields [K, ...]."""
  fields: dict
  options: list  # Per condition: its label, prompt or index (None: unconditional).
  image_side: int  # Side of the images drawn (pixels).
  side_name: str  # What sets it, for errors ('data.image_size', 'cond_image', ...).
  default_count: int | None = None  # Default number of samples (None: 16 rounded up to K).


def area_resize(x, side: int):
  """Averages [B, H, W, C] over (H / side) x (W / side) cells; H, W multiples of side."""
  b, h, w, c = x.shape
  if h % side or w % side:
    raise ValueError(f"Cannot area-resize {h}x{w} to {side}x{side}.")
  return x.reshape(b, side, h // side, side, w // side, c).mean(axis=(2, 4))


def read_images(value, name: str, channels: int) -> np.ndarray:
  """A user's images -> [K, H, W, C] float32 in [-1, 1]: [H, W], [H, W, C] or [K, H, W, C],
  uint8 in [0, 255] or float in [-1, 1]."""
  array = np.asarray(value)
  if array.ndim == 2:
    array = array[None, ..., None]
  elif array.ndim == 3:
    array = array[None] if array.shape[-1] in (1, 3, 4) and array.shape[-1] != array.shape[0] \
        else array[..., None]
  if array.ndim != 4:
    raise ValueError(f"{name}: shape {array.shape}; expected [H, W], [H, W, C] or "
                     f"[K, H, W, C].")
  if array.shape[-1] != channels:
    raise ValueError(f"{name}: {array.shape[-1]} channels (shape {array.shape}); the model "
                     f"expects {channels}.")
  if array.shape[1] != array.shape[2]:
    raise ValueError(f"{name}: {array.shape[1]}x{array.shape[2]}; expected a square image.")
  if array.dtype == np.uint8:
    return array.astype(np.float32) / 127.5 - 1.0
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f"{name}: dtype {array.dtype}; expected uint8 [0, 255] or float "
                     f"[-1, 1].")
  array = array.astype(np.float32)
  if not np.isfinite(array).all() or array.min() < -1.0 - 1e-3 or array.max() > 1.0 + 1e-3:
    raise ValueError(f"{name}: float values in [{array.min():.3g}, {array.max():.3g}]; "
                     f"expected [-1, 1] (or pass uint8).")
  return np.clip(array, -1.0, 1.0)


def as_gray_row(cond, like: np.ndarray) -> np.ndarray:
  """A condition image [B, h, w, c] shown at `like`'s size and channels (nearest)."""
  cond = np.asarray(cond, np.float32)
  if cond.shape[-1] != like.shape[-1]:
    cond = np.repeat(cond.mean(axis=-1, keepdims=True), like.shape[-1], axis=-1)
  return np.asarray(jax.image.resize(cond, like.shape, "nearest"))


class Mode:
  """One `conditioning.type`. Subclasses set NAME and override what differs."""
  NAME = None
  CONCAT = False  # Concatenated to the latents (image-shaped conditions).
  CACHEABLE = False  # A latent cache can hold its training inputs (not image-derived).
  SAMPLE_INPUTS = ()  # Keywords of `Sampler.sample` it takes.
  CONDITIONER = None  # config.conditioner.type it trains jointly, if any.
  FROZEN = False  # Its conditioner is pretrained and frozen (`frozen_params`).

  def __init__(self, config: ml_collections.ConfigDict, first_stage):
    block = config.conditioning
    self.config, self.block, self.first_stage = config, block, first_stage
    self.type = self.NAME
    self.dropout = float(block.get("dropout", 0.0))
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"conditioning.dropout={self.dropout}: expected a probability in "
                       f"[0, 1).")
    self.key = block.get("key")
    self.module = None  # The conditioner (class / text embedder), if any.
    self.frozen_params = None  # A frozen conditioner's parameters (FROZEN modes).
    self.concat_channels = 0
    self.image_channels = first_stage.image_channels
    self.setup(config)
    self._check_network(networks.spec(config.network))

  def setup(self, config) -> None:
    """The mode's own checks and settings (runs before the network checks)."""

  def _build_conditioner(self, config) -> None:
    if config.get("conditioner") is None or config.conditioner.get("type") != self.CONDITIONER:
      raise ValueError(f"conditioning.type={self.NAME!r} needs config.conditioner with "
                       f"type={self.CONDITIONER!r}.")
    self.module = factory.build_conditioner(config.conditioner)
    self._conditioner_inputs = factory.conditioner_example_inputs(config.conditioner)
    self.context_width = (config.conditioner.get("embed_dim") or
                          config.conditioner.get("width"))

  @property
  def label_classes(self) -> int | None:
    """Entries the network's label embedding needs (None: it takes no labels)."""
    return None

  def _check_network(self, spec) -> None:
    """The network (its networks.Spec) takes what this mode gives it."""
    if self.module is not None:
      if spec.context_dim != self.context_width:
        raise ValueError(f"network.context_dim={spec.context_dim}: expected the "
                         f"conditioner's width {self.context_width} (a {spec.type} that "
                         f"attends to context).")
    elif spec.context_dim is not None:
      raise ValueError(f"network.context_dim={spec.context_dim} but conditioning.type="
                       f"{self.NAME!r} gives no context: set network.context_dim=None.")
    if spec.num_classes != self.label_classes:
      if self.label_classes is None:
        raise ValueError(f"network.num_classes={spec.num_classes} needs conditioning.type="
                         f"'class' with class_input='embedding'.")
      raise ValueError(
          f"network.num_classes={spec.num_classes}: expected {self.label_classes} "
          f"(conditioning.num_classes{' + 1 null class for dropout' if self.dropout else ''}).")
    latent = self.first_stage.channels
    want_in = latent + self.concat_channels
    if spec.in_channels != want_in or spec.out_channels != latent:
      raise ValueError(
          f"network.in_channels={spec.in_channels}, out_channels={spec.out_channels}: "
          f"expected {want_in} ({latent} latent channels + {self.concat_channels} "
          f"concatenated for conditioning.type={self.NAME!r}) and {latent}.")

  # --- training --------------------------------------------------------------------------
  @property
  def batch_keys(self) -> tuple[str, ...]:
    """Training batch fields besides 'image' (those `host_fields` makes included)."""
    return ()

  def host_fields(self, batch: dict) -> dict:
    """Fields computed on the host from the batch (numpy), e.g. token ids."""
    del batch
    return {}

  def init(self, rng):
    """The trained conditioner's parameters, or None."""
    if self.module is None:
      return None
    return self.module.init(rng, *self._conditioner_inputs)["params"]

  def keep_flags(self, key, batch_size: int):
    """Per-example 1.0 (keep the condition) / 0.0 (drop it), P(drop) = dropout."""
    if not self.dropout:
      return jnp.ones((batch_size,), jnp.float32)
    return (jax.random.uniform(key, (batch_size,)) >= self.dropout).astype(jnp.float32)

  def fields(self, batch: dict, key) -> dict:
    """The explicit condition fields of a training batch (`key`: random masks)."""
    del batch, key
    return {}

  # --- the network's inputs ----------------------------------------------------------------
  def context_and_labels(self, params, fields, keep):
    """(context or None, labels or None); `params`: the conditioner's."""
    del params, fields, keep
    return None, None

  def concat_from(self, fs_params, fields, keep, side: int):
    """The concatenation [B, side, side, concat_channels], zero where dropped, or None."""
    del fs_params, fields, keep, side
    return None

  def _finish_concat(self, c, keep):
    if c.shape[-1] != self.concat_channels:
      raise ValueError(f"conditioning.type={self.NAME!r}: the condition has {c.shape[-1]} "
                       f"channels; the network expects {self.concat_channels}.")
    return jax.lax.stop_gradient(c * keep[:, None, None, None])

  def concat(self, fs_params, batch, keep, key):
    """The concatenation of a training batch at latent size, or None."""
    if not self.CONCAT:
      return None
    side = batch["image"].shape[1] // self.first_stage.downsample
    return self.concat_from(fs_params, self.fields(batch, key), keep, side)

  def network_inputs(self, params, fs_params, fields, keep, side: int) -> dict:
    """{'concat', 'context', 'y'} for latents of `side` from explicit fields."""
    context, y = self.context_and_labels(params, fields, keep)
    return {"concat": self.concat_from(fs_params, fields, keep, side), "context": context,
            "y": y}

  # --- sampling ----------------------------------------------------------------------------
  @property
  def input_channels(self) -> int | None:
    """Channels of the image a user gives (concatenation modes), else None."""
    return None

  def read(self, given: dict, image_size: int) -> Request:
    """A user's values of SAMPLE_INPUTS (None where not given) -> checked fields."""
    raise NotImplementedError

  def image_input(self, given: dict, name: str):
    value = given.get(name)
    if value is None:
      raise ValueError(f"The model is conditioned by {self.NAME!r}: give "
                       f"{' and '.join(self.SAMPLE_INPUTS)}.")
    return value

  # --- sample grids ------------------------------------------------------------------------
  def grid(self, sampling: ml_collections.ConfigDict, batch: dict | None, key):
    """(condition fields of the training run's sample grid, samples, columns)."""
    count = min(int(sampling.per_row), batch["image"].shape[0])
    batch = {k: v[:count] for k, v in batch.items() if k != "mask"}
    return jax.tree.map(np.asarray, self.fields(batch, key)), count, count

  def show(self, fields: dict, truth: np.ndarray) -> np.ndarray | None:
    """The condition as an image row of the samples' size (concatenation modes)."""
    del fields, truth
    return None


class KeyedMode(Mode):
  """A mode whose condition is one batch field, named by `conditioning.key`."""

  def setup(self, config) -> None:
    if not self.key:
      raise ValueError(f"conditioning.type={self.NAME!r} needs conditioning.key (the batch "
                       f"field of the condition).")

  @property
  def batch_keys(self):
    return (self.key,)

  def fields(self, batch, key):
    del key
    return {self.key: batch[self.key]}
