"""Denoiser networks by `config.network.type`: one interface for every family.

A network is a Linen module called as `net(x, time, context=None, y=None) -> out`:
x [B, H, W, in_channels] (noisy latents, any concatenated condition appended), time [B]
(the schedule's time input: a timestep, t in [0, 1] or the logSNR), context [B, N, D]
(cross-attention tokens) and y [B] (class labels). Everything outside models/ learns what
it needs about a network from its `Spec`, never from family-specific config fields.

Adding a family: a `Family` entry in FAMILIES (its module class and how to read its block).

Configs written before `config.network` existed had a `config.unet` block and parameters
under 'unet': `migrate_config` renames the block (type 'unet'); checkpoint readers rename the
parameters (LEGACY_PARAM_KEYS).
"""

import dataclasses
import re
from typing import Any, Callable

import ml_collections
import numpy as np

from ldm_jax.models import factory
from ldm_jax.models.unet import UNet
from ldm_jax.models.uvit import UViT

# Parameter-tree keys renamed since: {new: old}.
LEGACY_PARAM_KEYS = {"network": "unet"}


@dataclasses.dataclass(frozen=True)
class Spec:
  """What the rest of the library may know about a network."""
  type: str
  in_channels: int
  out_channels: int
  context_dim: int | None  # Width of the context tokens it attends to (None: no context).
  num_classes: int | None  # Entries of its label embedding (None: takes no labels).
  size_multiple: int  # Input sides must be multiples of this.
  dropout: float  # > 0: it has dropout (training passes a 'dropout' rng).
  logsnr_input: bool = False  # Its time input must be the logSNR (simple diffusion).
  square_only: bool = False  # Its inputs must be square (the U-ViT's 2-D positions).


@dataclasses.dataclass(frozen=True)
class Family:
  module: type
  spec: Callable[[ml_collections.ConfigDict], Spec]


def _unet_spec(block) -> Spec:
  return Spec(type="unet", in_channels=int(block.in_channels),
              out_channels=int(block.out_channels),
              context_dim=(int(block.context_dim) if block.get("context_dim") and
                           block.get("use_spatial_transformer", True) else None),
              num_classes=block.get("num_classes"),
              size_multiple=2 ** (len(block.channel_mult) - 1),
              dropout=float(block.get("dropout") or 0.0),
              logsnr_input=bool(block.get("logsnr_input", False)))


def _uvit_spec(block) -> Spec:
  defaults = UViT()
  get = lambda key: block.get(key, getattr(defaults, key))
  return Spec(type="uvit", in_channels=int(block.in_channels),
              out_channels=int(block.out_channels),
              context_dim=int(block.context_dim) if block.get("context_dim") else None,
              num_classes=block.get("num_classes"),
              size_multiple=int(get("patch_size")) * 2 ** len(get("channels")),
              dropout=max(float(get("dropout") or 0.0), float(get("res_dropout") or 0.0)),
              logsnr_input=bool(get("logsnr_input")), square_only=True)


FAMILIES = {"unet": Family(UNet, _unet_spec), "uvit": Family(UViT, _uvit_spec)}
TYPES = tuple(FAMILIES)


def _family(block: ml_collections.ConfigDict) -> Family:
  kind = block.get("type")
  if kind not in FAMILIES:
    raise ValueError(f"network.type={kind!r}: expected one of {TYPES}.")
  return FAMILIES[kind]


def build(block: ml_collections.ConfigDict, **overrides):
  """The network module of `config.network`; `overrides` set module fields
  (deterministic=False for training with dropout)."""
  cls = _family(block).module
  return cls(**factory.module_fields(block, cls, skip=("type",)), **overrides)


def spec(block: ml_collections.ConfigDict) -> Spec:
  return _family(block).spec(block)


def example_inputs(block: ml_collections.ConfigDict) -> tuple:
  """The smallest (x, time, context, y) the network accepts: enough to trace its shapes."""
  s = spec(block)
  x = np.zeros((1, s.size_multiple, s.size_multiple, s.in_channels), np.float32)
  context = np.zeros((1, 1, s.context_dim), np.float32) if s.context_dim else None
  y = np.zeros((1,), np.int32) if s.num_classes else None
  return x, np.zeros((1,), np.float32), context, y


def unet_block(**fields: Any) -> ml_collections.ConfigDict:
  """A `config.network` block of type 'unet'."""
  return ml_collections.ConfigDict({"type": "unet", **fields})


def migrate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A config of the old layout (`config.unet`) as a copy in today's (`config.network`,
  type 'unet'; frozen patterns 'unet/...' -> 'network/...'); today's configs are returned as
  they are. Both blocks: an error."""
  if "unet" not in config:
    return config
  if config.get("network") is not None:
    raise ValueError("The config has both `unet` (the old name) and `network`: keep "
                     "`network` only.")
  config = config.copy_and_resolve_references()
  old = config.unet
  with config.unlocked():
    del config["unet"]
    config.network = None if old is None else unet_block(**old.to_dict())
    frozen = config.get("optimizer", {}).get("frozen")
    if frozen:  # Parameter paths of the old layout: 'unet/...'.
      config.optimizer.frozen = tuple(
          re.sub(r"^(\^?)unet/", r"\1network/", pattern) for pattern in frozen)
  return config
