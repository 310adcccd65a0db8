"""Flax modules from config blocks (`config.autoencoder`, `config.conditioner`; denoiser
networks: models/networks.py)."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ldm_jax.models import clip_text
from ldm_jax.models import conditioning
from ldm_jax.models.autoencoder import AutoencoderKL
from ldm_jax.models.vq import VQModel

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def module_fields(block: ml_collections.ConfigDict, cls, skip=()) -> dict[str, Any]:
  known = set(cls.__dataclass_fields__) - {"parent", "name"}
  values = {k: v for k, v in block.items() if k not in skip}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"{cls.__name__} has no setting(s) {unknown}; it takes "
                     f"{sorted(known)}.")
  for key in ("dtype", "param_dtype"):
    if isinstance(values.get(key), str):
      if values[key] not in DTYPES:
        raise ValueError(f"{key}={values[key]!r}: expected one of {sorted(DTYPES)}.")
      values[key] = DTYPES[values[key]]
  for key, value in values.items():  # ConfigDict lists -> tuples (hashable module fields).
    if isinstance(value, list):
      values[key] = tuple(value)
  return values


def build_autoencoder(block: ml_collections.ConfigDict, **overrides):
  kinds = {"kl": AutoencoderKL, "vq": VQModel}
  if block.get("type") not in kinds:
    raise ValueError(f"autoencoder.type={block.get('type')!r}: expected one of "
                     f"{sorted(kinds)}.")
  cls = kinds[block.type]
  return cls(**module_fields(block, cls, skip=("type",)), **overrides)


def build_conditioner(block: ml_collections.ConfigDict, **overrides):
  """`type='class'`: ClassEmbedder; `type='text'`: TextEncoder (LDM's BERT-style);
  `type='clip'`: CLIPTextEncoder (Stable Diffusion's)."""
  kinds = {"class": conditioning.ClassEmbedder, "text": conditioning.TextEncoder,
           "clip": clip_text.CLIPTextEncoder}
  if block.get("type") not in kinds:
    raise ValueError(f"conditioner.type={block.get('type')!r}: expected one of "
                     f"{sorted(kinds)}.")
  cls = kinds[block.type]
  module = cls(**module_fields(block, cls, skip=("type",)), **overrides)
  if hasattr(module, "check"):
    module.check()
  return module


def conditioner_example_inputs(block: ml_collections.ConfigDict) -> tuple:
  return (np.zeros((1,) if block.type == "class" else (1, block.max_length), np.int32),)


def autoencoder_example_inputs(block: ml_collections.ConfigDict) -> tuple:
  side = 2 ** (len(block.ch_mult) - 1)
  return (np.zeros((1, side, side, block.in_channels), np.float32),)


def param_shapes(model, inputs: tuple):
  """The model's parameter tree as ShapeDtypeStructs (nothing allocated)."""
  rngs = {"params": jax.random.key(0), "sample": jax.random.key(1)}
  return jax.eval_shape(lambda: model.init(rngs, *inputs))["params"]
