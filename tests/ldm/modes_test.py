"""The conditioning-mode registry: one module per type, each consistent with the interface
(the modes' behaviour in training and sampling is tested in tests/training/ldm_stage_test.py
and tests/sampling/sampler_test.py)."""

import importlib
import types

import numpy as np
import pytest

from ldm_jax.ldm import modes
from ldm_jax.ldm.modes import base
from ldm_jax.sampling import inputs

# A tiny config of each mode.
CONFIGS = {"none": "digits_ldm:tiny,cond=none", "class": "digits_ldm:tiny",
           "text": "digits_ldm:tiny,cond=caption", "low_res": "ldm_sr:tiny",
           "inpainting": "ldm_inpainting:tiny", "semantic": "ldm_semantic:tiny",
           "image": "ldm_paired:tiny", "frozen_text": "stable_diffusion:tiny"}
FIRST_STAGE = types.SimpleNamespace(channels=4, downsample=2, image_channels=3)


def _mode(kind):
  name, _, arg = CONFIGS[kind].partition(":")
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  first_stage = types.SimpleNamespace(**{**vars(FIRST_STAGE),
                                         "image_channels": config.data.get("channels") or 3})
  return modes.create(config, first_stage)


def test_every_type_has_a_config_and_the_registry_is_consistent():
  assert set(CONFIGS) == set(modes.TYPES)
  # Their inputs are not image-derived.
  assert modes.CACHEABLE == ("none", "class", "text", "frozen_text")
  for kind in modes.TYPES:
    mode = _mode(kind)
    assert isinstance(mode, base.Mode) and mode.NAME == mode.type == kind
    assert set(mode.SAMPLE_INPUTS) <= set(inputs.KEYWORDS), kind
    assert mode.CONCAT == (kind in modes.CONCAT_TYPES) == (mode.concat_channels > 0), kind
    assert (mode.input_channels is not None) == (mode.CONCAT and kind != "semantic"), kind
    assert (mode.module is not None) == (mode.FROZEN or mode.CONDITIONER is not None and not (
        kind == "class" and mode.class_input == "embedding")), kind
    assert (mode.frozen_params is not None) == mode.FROZEN == (kind == "frozen_text"), kind


def test_unknown_type_is_named():
  config = importlib.import_module("configs.digits_ldm").get_config("tiny")
  config.conditioning.type = "sketch"
  with pytest.raises(ValueError, match=r"conditioning.type='sketch': expected one of \("):
    modes.create(config, FIRST_STAGE)


@pytest.mark.parametrize("kind", ["none", "class", "text", "frozen_text"])
def test_read_gives_one_row_per_condition(kind):
  mode = _mode(kind)
  prompts = {"prompt": ["a", "b"], "negative_prompt": "blurry"}
  given = {"class": {"class_label": [3, 5]}, "text": prompts, "frozen_text": prompts}.get(
      kind, {})
  request = mode.read(given, 16)
  rows = {len(v) for v in request.fields.values()}
  assert rows <= {len(request.options)} and request.image_side == 16
  assert request.options == {"none": [None], "class": [3, 5], "text": ["a", "b"],
                             "frozen_text": ["a", "b"]}[kind]
  if kind in ("text", "frozen_text"):  # One negative prompt for every prompt.
    negative = request.fields["negative_tokens"]
    assert negative.shape == request.fields["tokens"].shape
    np.testing.assert_array_equal(negative[0], negative[1])
    with pytest.raises(ValueError, match="negative_prompt: 2 given for 3 prompts"):
      mode.read({"prompt": ["a", "b", "c"], "negative_prompt": ["x", "y"]}, 16)


def test_keep_flags_drop_at_the_configured_rate():
  import jax  # pylint: disable=import-outside-toplevel
  mode = _mode("class")
  assert mode.dropout == 0.1
  kept = np.asarray(mode.keep_flags(jax.random.key(0), 20000))
  assert set(np.unique(kept)) == {0.0, 1.0} and abs(1 - kept.mean() - 0.1) < 0.01
