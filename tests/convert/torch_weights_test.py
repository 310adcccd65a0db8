"""Strict conversion: every missing, unexpected or mis-shaped key is named, all at once."""

import numpy as np
import pytest

from tests import references
from tests import torch_reference as ref

diffusers = references.require("diffusers")

from ldm_jax.convert import torch_weights  # pylint: disable=g-import-not-at-top
from ldm_jax.models.autoencoder import AutoencoderKL  # pylint: disable=g-import-not-at-top

CONFIG = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16)


def _pair():
  theirs = diffusers.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1,
                                   down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2)
  return theirs, AutoencoderKL(**CONFIG)


def test_torch_path():
  assert torch_weights.torch_path("down_blocks.0.attentions.1.to_out.0.weight") == (
      "down_blocks_0/attentions_1/to_out_0/weight")


def test_renamed_key_and_wrong_shape_are_both_named():
  theirs, ours = _pair()
  state = dict(theirs.state_dict())
  state["encoder.conv_in.weightt"] = state.pop("encoder.conv_in.weight")
  state["decoder.conv_out.bias"] = np.zeros(5, np.float32)
  with pytest.raises(torch_weights.WeightMismatchError) as error:
    ref.params_from(type("M", (), {"state_dict": lambda self: state})(), ours,
                    np.zeros((1, 16, 16, 3), np.float32))
  message = str(error.value)
  assert "unexpected (no such parameter): 1" in message
  assert "encoder.conv_in.weightt (32, 3, 3, 3)" in message
  assert "wrong shape: 1" in message
  assert "decoder.conv_out.bias (5,) -> decoder/conv_out/bias: converted (5,), expected (3,)" \
      in message
  assert "missing (no source key): 2" in message
  assert "encoder/conv_in/kernel (3, 3, 3, 32)" in message


def test_prefix_and_ignore():
  theirs, ours = _pair()
  state = {f"first_stage_model.{k}": v for k, v in theirs.state_dict().items()}
  state["model.diffusion_model.conv_in.weight"] = np.zeros(3)
  state["first_stage_model.loss.logvar"] = np.zeros(())
  shapes = ref.jax.eval_shape(lambda: ours.init(
      {"params": ref.jax.random.key(0), "sample": ref.jax.random.key(1)},
      np.zeros((1, 16, 16, 3), np.float32)))["params"]
  with pytest.raises(torch_weights.WeightMismatchError, match="loss.logvar"):
    torch_weights.to_flax(state, shapes, prefix="first_stage_model.")
  params = torch_weights.to_flax(state, shapes, prefix="first_stage_model.",
                                 ignore=(r"\.loss\.",))
  np.testing.assert_array_equal(
      params["encoder"]["conv_in"]["kernel"],
      theirs.state_dict()["encoder.conv_in.weight"].numpy().transpose(2, 3, 1, 0))
