"""Every LDM config's `tiny` variant trains through the real loop (1 step, eval, sample
grid, checkpoint) on offline data; the LDM-f sweep's blocks agree with each other."""

import importlib
import os
import types

import numpy as np
import pytest

from ldm_jax.ldm import conditions
from ldm_jax.training import loop

TINY = [
    "digits_ldm:tiny", "digits_ldm:tiny,cond=caption", "digits_ldm:tiny,cond=none",
    "ldm_celebahq256:tiny", "ldm_cin256:tiny",
    "ldm_cin256:tiny,f=1", "ldm_txt2img:tiny", "ldm_sr:tiny", "ldm_inpainting:tiny",
    "ldm_semantic:tiny",
]


def _load(spec):
  name, _, arg = spec.partition(":")
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.slow
@pytest.mark.parametrize("spec", TINY)
def test_tiny_variant_trains_one_step(spec, data_dir, tmp_path):
  config = _load(spec)
  config.data.data_dir = data_dir
  config.num_steps = 1
  state, metrics = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 1 and int(state.skipped) == 0
  assert np.isfinite(metrics["eval/loss"]) and metrics["eval/loss"] > 0
  assert os.listdir(tmp_path / "checkpoints") == ["1"]
  events = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
  assert events  # Metrics and the sample grid went to TensorBoard.


@pytest.mark.parametrize("f", [1, 2, 4, 8, 16, 32])
def test_ldm_f_sweep_blocks_agree(f):
  config = _load(f"ldm_cin256:f={f}")
  if f == 1:
    assert config.first_stage.source == "pixels" and config.autoencoder is None
    assert config.unet.in_channels == 3
    return
  ae = config.autoencoder
  assert 2 ** (len(ae.ch_mult) - 1) == f
  assert config.unet.in_channels == config.unet.out_channels == ae.embed_dim


def test_unknown_variants_are_refused():
  with pytest.raises(ValueError, match="f=3: expected one of"):
    _load("ldm_cin256:f=3")
  with pytest.raises(ValueError, match="cond='colour'"):
    _load("digits_ldm:cond=colour")
  with pytest.raises(ValueError, match="degradation='blur'"):
    _load("ldm_sr:degradation=blur")


def test_low_res_key_needs_the_pipeline_degradation():
  config = _load("ldm_sr:tiny")
  assert config.conditioning.key == "low_res" and config.data.degradation == "bsrgan_light"
  config.data.degradation = None
  with pytest.raises(ValueError, match="conditioning.key='low_res' for type 'low_res'"):
    conditions.Conditioning(config, types.SimpleNamespace(channels=4, downsample=2))
