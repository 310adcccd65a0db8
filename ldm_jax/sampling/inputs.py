"""A sampling request's conditions -> per-sample numpy fields, checked before any compilation.

The model's conditioning mode (ldm_jax/ldm/modes) reads and checks its own inputs; this file
refuses the inputs the mode does not take, checks the output size against the networks, and
spreads K conditions over N samples (sample i takes condition i * K // N).
"""

import dataclasses
import math

import numpy as np

# Every condition keyword of `Sampler.sample`; each mode takes some of them (SAMPLE_INPUTS).
KEYWORDS = ("class_label", "prompt", "negative_prompt", "cond_image", "image", "mask",
            "semantic_map")
_DEFAULT_SAMPLES = 16


@dataclasses.dataclass
class Conditions:
  fields: dict  # Batch fields, [num_samples, ...] each.
  num_samples: int
  side: tuple[int, int]  # Latent height and width.
  columns: int
  per_sample: list


def _refuse_unused(mode, given: dict) -> None:
  wanted = mode.SAMPLE_INPUTS
  for name in KEYWORDS:
    if given.get(name) is not None and name not in wanted:
      hint = f"it takes {' and '.join(wanted)}" if wanted else "it takes no condition"
      raise ValueError(f"{name} was given, but the model is conditioned by {mode.NAME!r}: "
                       f"{hint}.")


def _choices(count: int, num_samples, default=None):
  """(per-sample condition index, num_samples, columns) for `count` conditions.
  Default N: `default`, else 16 rounded up to a multiple of the count."""
  if num_samples is not None:
    n = int(num_samples)
  else:
    n = default or count * math.ceil(_DEFAULT_SAMPLES / count)
  if n < 1:
    raise ValueError(f"num_samples={num_samples}: expected a positive number.")
  if n < count:
    raise ValueError(f"num_samples={n} is fewer than the {count} conditions given; each "
                     f"needs one sample at least.")
  columns = n // count if count > 1 and n % count == 0 else math.ceil(math.sqrt(n))
  return np.arange(n) * count // n, n, columns


def _check_side(sampler, image_side: int, name: str) -> int:
  down = sampler.model.first_stage.downsample
  multiple = sampler.model.network_spec.size_multiple
  if image_side % (down * multiple):
    raise ValueError(f"{name}: the output would be {image_side} px, which must be a multiple "
                     f"of {down * multiple} (autoencoder f={down} x the network's "
                     f"{multiple}x downsampling).")
  return image_side // down


def build(sampler, given: dict, num_samples, height=None, width=None) -> Conditions:
  """The per-sample condition fields of `given` (keywords of KEYWORDS, None where not
  given) for `sampler`'s model; `height` / `width` (pixels) replace the model's image size
  where the condition does not fix it (unconditional, class and text models)."""
  mode = sampler.model.cond
  _refuse_unused(mode, given)
  request = mode.read(given, int(sampler.config.data.image_size))
  size = [request.image_side, request.image_side]
  for axis, (name, value) in enumerate((("height", height), ("width", width))):
    if value is None:
      continue
    if mode.CONCAT:
      raise ValueError(f"{name}={value}: the size of a {mode.NAME!r} model's samples is "
                       f"that of its condition ({request.side_name}).")
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name}={value!r}: expected a positive number of pixels.")
    size[axis] = int(value)
  if size[0] != size[1] and sampler.model.network_spec.square_only:
    raise ValueError(f"height={size[0]}, width={size[1]}: a {sampler.model.network_spec.type} "
                     f"network draws square images only.")
  side = tuple(_check_side(sampler, s, n) for s, n in zip(
      size, (request.side_name if height is None else "height",
             request.side_name if width is None else "width")))
  index, n, columns = _choices(len(request.options), num_samples, request.default_count)
  fields = {k: np.asarray(v)[index] for k, v in request.fields.items()}
  return Conditions(fields, n, side, columns, [request.options[i] for i in index])
