"""Pieces every experiment config shares, and the parsing of `--config=x.py:variant` args.

Each experiment file defines `get_config(arg=None)`; `arg` is what follows the colon:
`tiny`, `tiny,f=8`, `folder=/data/pets,size=128`. Load one with
`--config=configs/x.py:tiny` and override any field with `--config.data.batch_size=64`.
"""

import ml_collections
from ml_collections import config_dict


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'a,b=2' into {a: True, b: 2}, typed like `defaults`; unknown keys are errors."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"Config variant {key!r} is unknown; this config takes "
                       f"{sorted(defaults)} (as ':a,b=value').")
    default = defaults[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ValueError(f"Config variant {key!r} needs a value, e.g. {key}={default!r}.")
      result[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"Config variant {key}={value!r}: expected true or false.")
      result[key] = value.lower() in ("true", "1")
    else:
      try:
        result[key] = type(default)(value) if default is not None else value
      except ValueError as e:
        raise ValueError(f"Config variant {key}={value!r}: expected a "
                         f"{type(default).__name__}.") from e
  return result


def data_config(**overrides) -> ml_collections.ConfigDict:
  """The `data` block: source, preprocessing and batching. Every field is documented here."""
  config = ml_collections.ConfigDict()
  # Source: 'digits', 'photo_patches[/32|/64|/128]', 'image_folder' (+ folder), any
  # registered TFDS dataset prepared in data_dir, or a prepared TFDS dataset's directory.
  config.name = "digits"
  config.data_dir = config_dict.placeholder(str)  # None: TFDS's default data dir.
  config.folder = config_dict.placeholder(str)  # For name='image_folder'.
  config.train_split = "train"
  config.eval_split = "test"
  # Features carried into the batch; None leaves a field out.
  config.image_key = "image"
  config.label_key = config_dict.placeholder(str)
  config.caption_key = config_dict.placeholder(str)
  config.cond_image_keys = ()  # Paired images cropped/flipped exactly like `image`.
  # Preprocessing: shorter side resized to image_size, then a square crop.
  config.image_size = 64
  config.crop = "random"  # 'random' or 'center' (evaluation always crops the center).
  config.random_flip = True
  config.resize_method = "bicubic"
  config.small_images = "error"  # Shorter side < image_size: 'error', 'upscale' or 'skip'.
  config.channels = config_dict.placeholder(int)  # None keeps the source's; 1 or 3.
  # Batching: the *global* batch, split over processes and devices.
  config.batch_size = 64
  config.shuffle_buffer = 10_000
  config.update(overrides)
  return config


def mesh_config() -> ml_collections.ConfigDict:
  """Device mesh (data x fsdp); -1 takes all remaining devices."""
  return ml_collections.ConfigDict({"data": -1, "fsdp": 1})


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # The one root seed: data order, initialisation and sampling derive from it.
  config.mesh = mesh_config()
  config.data = data_config()
  return config
