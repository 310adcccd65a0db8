"""A sampling request's conditions -> per-sample numpy fields, checked before any compilation.

Images arrive as [H, W], [H, W, C] or [K, H, W, C] arrays: uint8 in [0, 255] or float in
[-1, 1]. Masks: 1 / True / 255 marks the hole. Semantic maps: integers, [H, W] or [K, H, W].
"""

import dataclasses
import math

import numpy as np

_FIELD_OF = {"class": "class_label", "text": "prompt", "low_res": "cond_image",
             "inpainting": "image", "semantic": "semantic_map", "image": "cond_image"}
_DEFAULT_SAMPLES = 16


@dataclasses.dataclass
class Given:
  class_label: object = None
  prompt: object = None
  cond_image: object = None
  image: object = None
  mask: object = None
  semantic_map: object = None


@dataclasses.dataclass
class Conditions:
  fields: dict  # Batch fields, [num_samples, ...] each.
  num_samples: int
  side: int  # Latent side.
  columns: int
  per_sample: list


def _refuse_unused(mode: str, given: Given) -> None:
  wanted = {_FIELD_OF.get(mode)} | ({"mask"} if mode == "inpainting" else set())
  for name in (f.name for f in dataclasses.fields(given)):
    value = getattr(given, name)
    if value is not None and name not in wanted:
      hint = f"it takes {' and '.join(sorted(w for w in wanted if w))}" if wanted - {None} \
          else "it takes no condition"
      raise ValueError(f"{name} was given, but the model is conditioned by {mode!r}: {hint}.")


def _images(value, name: str, channels: int) -> np.ndarray:
  """[K, H, W, C] float32 in [-1, 1]."""
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


def _mask(value, image: np.ndarray) -> np.ndarray:
  """[K, H, W, 1] float {0, 1}, 1 = hole."""
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


def _semantic(value, num_classes: int) -> np.ndarray:
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


def _choices(options: list, num_samples, default=None):
  """(per-sample option index, num_samples, columns): sample i takes option i * K // N.
  Default N: `default`, else 16 rounded up to a multiple of K."""
  k = len(options)
  if num_samples is not None:
    n = int(num_samples)
  else:
    n = default or k * math.ceil(_DEFAULT_SAMPLES / k)
  if n < 1:
    raise ValueError(f"num_samples={num_samples}: expected a positive number.")
  if n < k:
    raise ValueError(f"num_samples={n} is fewer than the {k} conditions given; each needs "
                     f"one sample at least.")
  columns = n // k if k > 1 and n % k == 0 else math.ceil(math.sqrt(n))
  return np.arange(n) * k // n, n, columns


def _check_side(sampler, image_side: int, name: str) -> int:
  down = sampler.model.first_stage.downsample
  multiple = 2 ** (len(sampler.config.unet.channel_mult) - 1)
  if image_side % (down * multiple):
    raise ValueError(f"{name}: the output would be {image_side} px, which must be a multiple "
                     f"of {down * multiple} (autoencoder f={down} x the UNet's "
                     f"{multiple}x downsampling).")
  return image_side // down


def build(sampler, given: Given, num_samples) -> Conditions:
  """The per-sample condition fields of `given` for `sampler`'s model."""
  mode, cond = sampler.mode, sampler.cond
  _refuse_unused(mode, given)
  size = int(sampler.config.data.image_size)
  if mode == "none":
    index, n, columns = _choices([None], num_samples)
    return Conditions({}, n, _check_side(sampler, size, "data.image_size"), columns,
                      [None] * n)
  if mode == "class":
    classes = cond.num_classes
    labels = list(range(classes)) if given.class_label is None else (
        [given.class_label] if np.ndim(given.class_label) == 0 else list(given.class_label))
    for label in labels:
      if not isinstance(label, (int, np.integer)) or not 0 <= label < classes:
        raise ValueError(f"class_label={label!r}: expected an integer in 0 .. {classes - 1} "
                         f"(the model has {classes} classes).")
    index, n, columns = _choices(labels, num_samples)
    per = [int(labels[i]) for i in index]
    return Conditions({"label": np.asarray(per, np.int32)}, n,
                      _check_side(sampler, size, "data.image_size"), columns, per)
  if mode == "text":
    if given.prompt is None:
      raise ValueError("The model is text-conditional: give a prompt (a string or a list).")
    prompts = [given.prompt] if isinstance(given.prompt, str) else list(given.prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
      raise ValueError(f"prompt={given.prompt!r}: expected a string or a list of strings.")
    index, n, columns = _choices(prompts, num_samples)
    per = [prompts[i] for i in index]
    return Conditions({"tokens": cond.tokenize(per)}, n,
                      _check_side(sampler, size, "data.image_size"), columns, per)
  # Concatenation: one field per condition image, tiled over the samples.
  name = _FIELD_OF[mode]
  value = getattr(given, name)
  if value is None:
    raise ValueError(f"The model is conditioned by {mode!r}: give {name}"
                     f"{' and mask' if mode == 'inpainting' else ''}.")
  if mode == "semantic":
    maps = _semantic(value, cond.concat_channels)
    side = _check_side(sampler, maps.shape[1], name)
    fields = {cond.key: maps}
  elif mode == "inpainting":
    images = _images(value, name, sampler.input_channels)
    if given.mask is None:
      raise ValueError("The model inpaints: give mask (1 = the hole to fill) with image.")
    fields = {"image": images, "mask": _mask(given.mask, images)}
    side = _check_side(sampler, images.shape[1], name)
  elif mode == "low_res":
    images = _images(value, name, sampler.input_channels)
    factor = int(sampler.config.data.degradation_factor) if cond.key else (
        sampler.model.first_stage.downsample)
    side = _check_side(sampler, images.shape[1] * factor, f"{name} ({images.shape[1]} px x "
                       f"{factor})")
    fields = {"low_res": images}
  else:
    images = _images(value, name, sampler.input_channels)
    side = _check_side(sampler, images.shape[1], name)
    fields = {cond.key: images}
  count = len(next(iter(fields.values())))
  index, n, columns = _choices(list(range(count)), num_samples, default=count)
  return Conditions({k: v[index] for k, v in fields.items()}, n, side, columns,
                    [int(i) for i in index])
