"""Conditioning modes, one module each, found by `config.conditioning.type` in MODES.

Adding a mode: a module with a `base.Mode` subclass, its line in MODES, and its test.
"""

from ldm_jax.ldm.modes import base
from ldm_jax.ldm.modes import class_label
from ldm_jax.ldm.modes import frozen_text
from ldm_jax.ldm.modes import inpainting
from ldm_jax.ldm.modes import low_res
from ldm_jax.ldm.modes import none
from ldm_jax.ldm.modes import paired
from ldm_jax.ldm.modes import semantic
from ldm_jax.ldm.modes import text

MODES = {mode.NAME: mode for mode in (
    none.Unconditional, class_label.ClassLabel, text.Text, frozen_text.FrozenText,
    low_res.LowRes,
    inpainting.Inpainting, semantic.Semantic, paired.PairedImage)}
TYPES = tuple(MODES)
CONCAT_TYPES = tuple(name for name, mode in MODES.items() if mode.CONCAT)
CACHEABLE = tuple(name for name, mode in MODES.items() if mode.CACHEABLE)


def create(config, first_stage) -> base.Mode:
  """The mode of `config.conditioning.type`, checked against the config."""
  kind = config.conditioning.type
  if kind not in MODES:
    raise ValueError(f"conditioning.type={kind!r}: expected one of {TYPES}.")
  return MODES[kind](config, first_stage)
