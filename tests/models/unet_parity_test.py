"""The UNet against diffusers' UNet2DConditionModel and UNet2DModel with identical weights."""

import numpy as np
import pytest

from ldm_jax.convert import diffusers_configs
from tests import references
from tests import torch_reference as ref

diffusers = references.require("diffusers")
torch = ref.torch

from ldm_jax.models.unet import UNet  # pylint: disable=g-import-not-at-top

TOLERANCE = 1e-4
BASE = dict(in_channels=4, out_channels=4, model_channels=32, groups=8)

CROSS_ATTENTION = {
    "sd1_like_heads": dict(channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                           num_heads=2, context_dim=16),
    "sd2_like_head_channels_linear_depth2": dict(
        channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(2, 4),
        num_head_channels=16, linear_projection=True, transformer_depth=2, context_dim=24),
    "class_embedding_scale_shift": dict(
        channel_mult=(1, 2), num_res_blocks=2, attention_resolutions=(2,), num_heads=4,
        context_dim=16, num_classes=10, scale_shift=True, in_channels=7),
}
SELF_ATTENTION = {
    "pixel_class_conditional": dict(channel_mult=(1, 2), num_res_blocks=1,
                                    attention_resolutions=(2,), num_head_channels=8,
                                    num_classes=5, in_channels=3, out_channels=3),
    "three_levels": dict(channel_mult=(1, 2, 3), num_res_blocks=1,
                         attention_resolutions=(1, 4), num_head_channels=16),
    "concat_input_two_res_blocks": dict(channel_mult=(1, 1, 2), num_res_blocks=2,
                                        attention_resolutions=(4,), num_head_channels=32,
                                        in_channels=6, out_channels=3),
}


def _inputs(c, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, 16, 16, c["in_channels"])).astype(np.float32)
  t = np.array([10, 731], np.int32)
  context = None
  if c.get("context_dim"):
    context = rng.standard_normal((2, 5, c["context_dim"])).astype(np.float32)
  y = np.array([1, 3], np.int32) if c.get("num_classes") else None
  return x, t, context, y


def _compare(name, theirs, config, ours_kwargs):
  ref.randomize(theirs, seed=3)
  theirs.eval()
  ours = UNet(**ours_kwargs)
  x, t, context, y = _inputs(config)
  params = ref.params_from(theirs, ours, x, t, context, y)
  torch_kwargs = {}
  if context is not None:
    torch_kwargs["encoder_hidden_states"] = torch.from_numpy(context)
  if y is not None:
    torch_kwargs["class_labels"] = torch.from_numpy(y).long()
  with torch.no_grad():
    expected = theirs(ref.nchw(x), torch.from_numpy(t).long(), **torch_kwargs).sample
  out = ours.apply({"params": params}, x, t, context, y)
  error = ref.relative_error(out, ref.nhwc(expected))
  print(f"UNet[{name}] relative error {error:.2e}")
  assert error <= TOLERANCE


@pytest.mark.parity
@pytest.mark.parametrize("name", list(CROSS_ATTENTION))
def test_unet_matches_unet_2d_condition_model(name):
  config = {**BASE, **CROSS_ATTENTION[name]}
  theirs = diffusers.UNet2DConditionModel(**diffusers_configs.unet_condition_kwargs(config))
  _compare(name, theirs, config, config)


@pytest.mark.parity
@pytest.mark.parametrize("name", list(SELF_ATTENTION))
def test_unet_matches_unet_2d_model(name):
  config = {**BASE, "context_dim": None, **SELF_ATTENTION[name]}
  theirs = diffusers.UNet2DModel(**diffusers_configs.unet_2d_kwargs(config))
  _compare(name, theirs, config, {**config, "use_spatial_transformer": False})
