"""Conditioning of the latent UNet, all from `config.conditioning`.

`conditioning.type`:
  'none'        unconditional;
  'class'       `label` -> a class embedder's one-token context (class_input='context', as
                LDM cin256) or the UNet's label embedding (class_input='embedding');
  'text'        `caption` -> offline tokenizer -> TextEncoder context, trained with the UNet;
  'low_res'     super-resolution: the image, downsampled (bicubic, antialiased) to the latent
                size, concatenated to the latents (LDM-SR); with `conditioning.key='low_res'`
                the pipeline's BSRGAN-degraded image instead (`data.degradation`, LDM-BSR),
                resized to the latent size when its factor differs;
  'inpainting'  a random mask (1 = hole) at latent size and the latents of the masked image,
                concatenated in that order (CompVis/SD inpainting layout);
  'semantic'    an integer map `conditioning.key` -> one-hot over `num_semantic_classes`,
                area-averaged to latent size, concatenated;
  'image'       a paired image `conditioning.key` (RGB -> thermal, ...), through the frozen
                autoencoder (`encode_condition=True`) or resized pixels, concatenated.

Classifier-free guidance training: each example keeps its condition with probability
1 - `dropout`; a dropped one becomes the null class (the embedder's extra row), the empty
caption, or a zero concatenation. The same `keep` flags, all zero, give the unconditional
inputs at sampling time.

The UNet sees a dict `{'concat', 'context', 'y'}` (None where unused).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ldm_jax.models import factory
from ldm_jax.models import tokenizer as tokenizer_lib

TYPES = ("none", "class", "text", "low_res", "inpainting", "semantic", "image")
CONCAT_TYPES = ("low_res", "inpainting", "semantic", "image")
CLASS_INPUTS = ("context", "embedding")


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


def area_resize(x, side: int):
  """Averages [B, H, W, C] over (H / side) x (W / side) cells; H, W multiples of side."""
  b, h, w, c = x.shape
  if h % side or w % side:
    raise ValueError(f"Cannot area-resize {h}x{w} to {side}x{side}.")
  return x.reshape(b, side, h // side, side, w // side, c).mean(axis=(2, 4))


class Conditioning:
  """Turns batch fields into UNet inputs for one `conditioning` config block."""

  def __init__(self, config: ml_collections.ConfigDict, first_stage):
    block = config.conditioning
    self.block = block
    self.type = block.type
    self.first_stage = first_stage
    self.dropout = float(block.get("dropout", 0.0))
    if self.type not in TYPES:
      raise ValueError(f"conditioning.type={self.type!r}: expected one of {TYPES}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"conditioning.dropout={self.dropout}: expected a probability in "
                       f"[0, 1).")
    self.class_input = block.get("class_input", "context")
    self.key = block.get("key")
    self.module = None
    self.tokenizer = None
    self.max_length = None
    unet = config.unet
    latent_channels = first_stage.channels
    if self.type == "class":
      self.num_classes = int(block.num_classes)
      if self.class_input not in CLASS_INPUTS:
        raise ValueError(f"conditioning.class_input={self.class_input!r}: expected one of "
                         f"{CLASS_INPUTS}.")
      if self.class_input == "context":
        self._build_conditioner(config, "class")
        if config.conditioner.num_classes != self.num_classes:
          raise ValueError(f"conditioner.num_classes={config.conditioner.num_classes} but "
                           f"conditioning.num_classes={self.num_classes}.")
        if self.dropout and not config.conditioner.add_null_class:
          raise ValueError("conditioning.dropout > 0 needs a null class: set "
                           "conditioner.add_null_class=True.")
      else:
        want = self.num_classes + (1 if self.dropout else 0)
        if unet.num_classes != want:
          raise ValueError(f"unet.num_classes={unet.num_classes}: expected {want} "
                           f"(conditioning.num_classes{' + 1 null class for dropout' if self.dropout else ''}).")
    if self.type == "text":
      self._build_conditioner(config, "text")
      self.tokenizer = tokenizer_lib.load_tokenizer(block.get("tokenizer"))
      self.max_length = int(config.conditioner.max_length)
      if config.conditioner.vocab_size < self.tokenizer.vocab_size:
        raise ValueError(f"conditioner.vocab_size={config.conditioner.vocab_size} is smaller "
                         f"than the tokenizer's {self.tokenizer.vocab_size}.")
      self.null_tokens = self.tokenizer([""], self.max_length)[0]
    if self.type in ("class", "text") and self.module is not None:
      width = config.conditioner.get("embed_dim") or config.conditioner.get("width")
      if unet.context_dim != width:
        raise ValueError(f"unet.context_dim={unet.context_dim}: expected the conditioner's "
                         f"width {width}.")
    elif unet.context_dim is not None and unet.use_spatial_transformer:
      raise ValueError(f"unet.context_dim={unet.context_dim} but conditioning.type="
                       f"{self.type!r} gives no context: set unet.context_dim=None.")
    if self.type != "class" or self.class_input != "embedding":
      if unet.num_classes is not None:
        raise ValueError(f"unet.num_classes={unet.num_classes} needs conditioning.type="
                         f"'class' with class_input='embedding'.")
    if self.type == "low_res" and self.key is not None and (
        self.key != "low_res" or not config.data.get("degradation")):
      raise ValueError(f"conditioning.key={self.key!r} for type 'low_res': expected None "
                       f"(bicubic downsampling in the step) or 'low_res' with "
                       f"data.degradation set (the pipeline's degraded image).")
    if self.type in ("semantic", "image") and not self.key:
      raise ValueError(f"conditioning.type={self.type!r} needs conditioning.key (the batch "
                       f"field of the condition).")
    image_channels = config.data.get("channels") or (
        config.autoencoder.in_channels if config.get("autoencoder") else 3)
    self.concat_channels = {
        "low_res": image_channels,
        "inpainting": latent_channels + 1,
        "semantic": int(block.get("num_semantic_classes") or 0),
        "image": latent_channels if block.get("encode_condition", True) else int(
            block.get("condition_channels") or image_channels),
    }.get(self.type, 0)
    if self.type == "semantic" and self.concat_channels < 2:
      raise ValueError("conditioning.type='semantic' needs conditioning.num_semantic_classes "
                       ">= 2.")
    want_in = latent_channels + self.concat_channels
    if unet.in_channels != want_in or unet.out_channels != latent_channels:
      raise ValueError(
          f"unet.in_channels={unet.in_channels}, out_channels={unet.out_channels}: expected "
          f"{want_in} ({latent_channels} latent channels + {self.concat_channels} "
          f"concatenated for conditioning.type={self.type!r}) and {latent_channels}.")

  def _build_conditioner(self, config, kind: str):
    if config.get("conditioner") is None or config.conditioner.get("type") != kind:
      raise ValueError(f"conditioning.type={self.type!r} needs config.conditioner with "
                       f"type={kind!r}.")
    self.module = factory.build_conditioner(config.conditioner)
    self.conditioner_inputs = factory.conditioner_example_inputs(config.conditioner)

  # --- host side ------------------------------------------------------------------------
  @property
  def batch_keys(self) -> tuple[str, ...]:
    return {"class": ("label",), "text": ("tokens",), "semantic": (self.key,),
            "image": (self.key,), "low_res": (self.key,) if self.key else ()}.get(self.type, ())

  def tokenize(self, captions) -> np.ndarray:
    return self.tokenizer(list(captions), self.max_length)

  # --- parameters -------------------------------------------------------------------------
  def init(self, rng):
    """The trained conditioner's parameters, or None."""
    if self.module is None:
      return None
    return nn.unbox(self.module.init(rng, *self.conditioner_inputs)["params"])

  # --- inside the jitted steps ---------------------------------------------------------------
  def keep_flags(self, key, batch_size: int):
    """Per-example 1.0 (keep the condition) / 0.0 (drop it), P(drop) = dropout."""
    if not self.dropout:
      return jnp.ones((batch_size,), jnp.float32)
    return (jax.random.uniform(key, (batch_size,)) >= self.dropout).astype(jnp.float32)

  def fields(self, batch, key) -> dict:
    """The explicit condition fields (those `inputs_from` takes) of a training batch:
    `label` / `tokens`; the low-resolution input (the pipeline's degraded image, or the image
    itself); random box masks drawn from `key` and the image (inpainting); the map or the
    paired image under `conditioning.key`."""
    if self.type == "class":
      return {"label": batch["label"]}
    if self.type == "text":
      return {"tokens": batch["tokens"]}
    if self.type == "low_res":
      return {"low_res": batch[self.key] if self.key else batch["image"]}
    if self.type == "inpainting":
      image = batch["image"]
      return {"mask": box_masks(key, image.shape[0], image.shape[1]), "image": image}
    if self.type in ("semantic", "image"):
      return {self.key: batch[self.key]}
    return {}

  def concat(self, fs_params, batch, keep, key):
    """The concatenated conditioning [B, h, w, C] at latent size from a training batch, or
    None; inpainting draws its random box masks from `key`."""
    if self.type not in CONCAT_TYPES:
      return None
    side = batch["image"].shape[1] // self.first_stage.downsample
    return self.concat_from(fs_params, self.fields(batch, key), keep, side)

  def concat_from(self, fs_params, fields, keep, side: int):
    """The concatenation [B, side, side, C] from its explicit inputs (what sampling gets
    from a user): `low_res` (any size, [-1, 1]); `mask` (1 = hole) and `image` at image
    size; the integer map or the paired image under `conditioning.key`."""
    if self.type == "low_res":
      c = self.low_res(fields["low_res"], side)
    elif self.type == "inpainting":
      mask, image = fields["mask"].astype(jnp.float32), fields["image"].astype(jnp.float32)
      masked = image * (1.0 - mask)
      c = jnp.concatenate([area_resize(mask, side) if side != mask.shape[1] else mask,
                           self.first_stage.encode(fs_params, masked)], axis=-1)
    elif self.type == "semantic":
      labels = fields[self.key]
      labels = labels[..., 0] if labels.ndim == 4 else labels
      onehot = jax.nn.one_hot(labels, self.concat_channels, dtype=jnp.float32)
      c = area_resize(onehot, side)
    else:
      cond = fields[self.key].astype(jnp.float32)
      if self.block.get("encode_condition", True):
        c = self.first_stage.encode(fs_params, cond)
      else:
        c = jax.image.resize(cond, (cond.shape[0], side, side, cond.shape[-1]), "bicubic",
                             antialias=True)
    if c.shape[-1] != self.concat_channels:
      raise ValueError(f"conditioning.type={self.type!r}: the condition has {c.shape[-1]} "
                       f"channels; the UNet expects {self.concat_channels}.")
    return jax.lax.stop_gradient(c * keep[:, None, None, None])

  def low_res(self, low, side: int):
    """[B, side, side, C] in [-1, 1]: the low-resolution input (the pipeline's degraded
    image, or the image itself), bicubic-resized to the latent side where it differs."""
    low = jnp.asarray(low, jnp.float32)
    if low.shape[1] != side or low.shape[2] != side:
      low = jax.image.resize(low, (low.shape[0], side, side, low.shape[-1]), "bicubic",
                             antialias=True)
    return jnp.clip(low, -1.0, 1.0)

  def context_and_labels(self, params, batch, keep):
    """(context or None, y or None), applying the conditioner with `params`."""
    if self.type == "class":
      keep_i = keep.astype(bool)
      labels = batch["label"].astype(jnp.int32)
      if self.class_input == "embedding":
        return None, jnp.where(keep_i, labels, self.num_classes)
      null = self.module.null_label if self.dropout else 0
      labels = jnp.where(keep_i, labels, null)
      return self.module.apply({"params": params}, labels).astype(jnp.float32), None
    if self.type == "text":
      tokens = jnp.where(keep.astype(bool)[:, None], batch["tokens"].astype(jnp.int32),
                         jnp.asarray(self.null_tokens)[None])
      return self.module.apply({"params": params}, tokens).astype(jnp.float32), None
    return None, None

  def inputs_from(self, params, fs_params, fields, keep, side: int):
    """`inputs` from explicit condition fields (`label`, `tokens`, or those of
    `concat_from`), for latents of `side` x `side`."""
    context, y = self.context_and_labels(params, fields, keep)
    concat = (self.concat_from(fs_params, fields, keep, side)
              if self.type in CONCAT_TYPES else None)
    return {"concat": concat, "context": context, "y": y}
