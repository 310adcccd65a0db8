"""Every LDM config's `tiny` variant trains through the real loop (1 step, eval, sample
grid, checkpoint) on offline data; the LDM-f sweep's blocks agree with each other."""

import importlib
import json
import os
import types

import numpy as np
import pytest

from ldm_jax.ldm import modes

TINY = [
    "digits_ldm:tiny", "digits_ldm:tiny,cond=caption", "digits_ldm:tiny,cond=none",
    "ldm_celebahq256:tiny", "ldm_cin256:tiny", "ldm_txt2img:tiny", "ldm_sr:tiny",
    "ldm_inpainting:tiny", "ldm_semantic:tiny", "ldm_paired:tiny",
]  # Pixel space (ldm_cin256:f=1's first stage) trains in tests/ldm/model_test.py's
#    simple diffusion runs.


def _load(spec):
  name, _, arg = spec.partition(":")
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.slow
@pytest.mark.parametrize("spec", TINY)
def test_tiny_variant_trains_one_step(spec, tiny_run):
  """(The runs are shared with tests/sampling, which sample from them.)"""
  workdir = tiny_run(spec)
  with open(os.path.join(workdir, "result.json")) as f:
    result = json.load(f)
  assert result["step"] == 1 and result["skipped"] == 0
  assert np.isfinite(result["eval_loss"]) and result["eval_loss"] > 0
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]
  events = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]
  assert events  # Metrics and the sample grid went to TensorBoard.


@pytest.mark.parametrize("f", [1, 2, 4, 8, 16, 32])
def test_ldm_f_sweep_blocks_agree(f):
  config = _load(f"ldm_cin256:f={f}")
  if f == 1:
    assert config.first_stage.source == "pixels" and config.autoencoder is None
    assert config.network.in_channels == 3
    return
  ae = config.autoencoder
  assert 2 ** (len(ae.ch_mult) - 1) == f
  assert config.network.in_channels == config.network.out_channels == ae.embed_dim


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
    modes.create(config, types.SimpleNamespace(channels=4, downsample=2, image_channels=3))
