"""Helpers for tests against PyTorch/diffusers: random weights, conversion, error measure,
references run in float64."""

import contextlib

import jax
import numpy as np
import pytest

from tests import references  # pylint: disable=g-import-not-at-top,wrong-import-position

torch = references.require("torch")

from ldm_jax.convert import compvis  # pylint: disable=g-import-not-at-top
from ldm_jax.convert import torch_weights  # pylint: disable=g-import-not-at-top
from ldm_jax.models import factory  # pylint: disable=g-import-not-at-top


def randomize(module, seed: int = 0) -> None:
  """Gives every parameter of a torch module random values (norm scales near 1), in place.

  Defaults such as zero biases and unit norm scales would hide transposition and indexing
  errors, so everything is drawn at random, scaled to keep activations O(1).
  """
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in module.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if "norm" in name and name.endswith("weight"):
        param.copy_(1.0 + 0.1 * noise)
      elif name.endswith("bias"):
        param.copy_(0.1 * noise)
      elif param.ndim >= 2:
        fan_in = int(np.prod(param.shape[1:]))
        param.copy_(noise / np.sqrt(fan_in))
      else:
        param.copy_(noise)


def params_from(module, flax_model, *init_args):
  """Our parameter tree holding the torch module's weights (strict conversion)."""
  shapes = factory.param_shapes(flax_model, init_args)
  return torch_weights.to_flax(module.state_dict(), shapes)


def nchw(x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def relative_error(ours, reference) -> float:
  """max |ours - reference| / max |reference| (a normwise relative error)."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  assert ours.shape == reference.shape, (ours.shape, reference.shape)
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def compvis_unet_state(block, theirs) -> dict:
  """A diffusers UNet's weights under CompVis names (`model.diffusion_model.*`), numpy."""
  levels = tuple(2**l in block.attention_resolutions for l in range(len(block.channel_mult)))
  return {compvis.UNET_PREFIX + compvis.unet_name(
      k, num_res_blocks=block.num_res_blocks, attention_levels=levels): v.numpy()
          for k, v in theirs.state_dict().items()}


def compvis_autoencoder_state(block, theirs) -> dict:
  """A diffusers autoencoder's weights under CompVis names (`first_stage_model.*`)."""
  state = {}
  for key, value in theirs.state_dict().items():
    value = value.numpy()
    name = compvis.autoencoder_name(key, num_levels=len(block.ch_mult))
    if ".attn" in name and name.endswith("weight") and value.ndim == 2:
      value = value[:, :, None, None]  # CompVis attention projections are 1x1 convs.
    state[compvis.AUTOENCODER_PREFIX + name] = value
  return state


class _Float32IsFloat64:
  """A module (torch, numpy) whose float32 is float64; every other name is the module's."""

  def __init__(self, module):
    self._module = module
    self.float32 = module.float64

  def __getattr__(self, name):
    return getattr(self._module, name)


@contextlib.contextmanager
def float32_as_float64(module):
  """Inside, `module` (a reference's module that casts to float32 itself: `torch.float32`,
  `np.float32`) gets float64 wherever it names float32, so that its own code runs in float64:
  float64 on both sides leaves only float64 rounding between a formula and ours."""
  with pytest.MonkeyPatch.context() as patch:
    for name, library in (("torch", torch), ("np", np)):
      if getattr(module, name, None) is library:
        patch.setattr(module, name, _Float32IsFloat64(library))
    yield
