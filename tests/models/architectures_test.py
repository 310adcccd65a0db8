"""Parameter counts of the known architectures equal diffusers' for the same configuration.

diffusers' models are built on torch's 'meta' device: shapes without memory.
"""

import jax
import numpy as np
import pytest

from configs import architectures
from ldm_jax.models import factory
from ldm_jax.models import networks
from ldm_jax.convert import diffusers_configs
from tests import references

diffusers = references.require("diffusers")
torch = references.require("torch")


def _ours(model, *args):
  shapes = jax.eval_shape(lambda: model.init(
      {"params": jax.random.key(0), "sample": jax.random.key(1)}, *args))
  return sum(int(np.prod(x.shape))
             for x in jax.tree_util.tree_leaves(shapes["params"]))


def _theirs(cls, **kwargs):
  with torch.device("meta"):
    model = cls(**kwargs)
  return sum(p.numel() for p in model.parameters())


def _unet_args(c):
  x = np.zeros((1, 32, 32, c.in_channels), np.float32)
  context = np.zeros((1, 4, c.context_dim), np.float32) if c.context_dim else None
  return x, np.zeros((1,)), context


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(architectures.UNETS))
def test_unet_parameter_count_equals_diffusers(name):
  c = architectures.UNETS[name]()
  ours = _ours(networks.build(c), *_unet_args(c))
  if c.use_spatial_transformer:
    theirs = _theirs(diffusers.UNet2DConditionModel,
                     **diffusers_configs.unet_condition_kwargs(c.to_dict()))
  else:
    theirs = _theirs(diffusers.UNet2DModel, **diffusers_configs.unet_2d_kwargs(c.to_dict()))
  print(f"{name}: {ours:,} parameters (diffusers {theirs:,})")
  assert ours == theirs
  if name == "sd_v1_unet":
    assert ours == 859_520_964  # diffusers' UNet2DConditionModel for SD v1.


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(architectures.AUTOENCODERS))
def test_autoencoder_parameter_count_equals_diffusers(name):
  c = architectures.AUTOENCODERS[name]()
  ours = _ours(factory.build_autoencoder(c), np.zeros((1, 64, 64, 3), np.float32))
  blocks = diffusers_configs.autoencoder_kwargs(c.to_dict())
  if c.type == "kl":
    theirs = _theirs(diffusers.AutoencoderKL, latent_channels=c.z_channels, **blocks)
  else:
    theirs = _theirs(diffusers.VQModel, latent_channels=c.z_channels,
                     vq_embed_dim=c.embed_dim, num_vq_embeddings=c.n_embed, **blocks)
  print(f"{name}: {ours:,} parameters (diffusers {theirs:,})")
  assert ours == theirs
  if name == "sd_kl_f8":
    assert ours == 83_653_863  # diffusers' AutoencoderKL for Stable Diffusion.


def test_factory_errors():
  with pytest.raises(ValueError, match="autoencoder.type='gan'"):
    factory.build_autoencoder(architectures._autoencoder("gan"))  # pylint: disable=protected-access
  c = architectures.sd_v1_unet()
  c.unlock()
  c.channel_multt = (1,)
  with pytest.raises(ValueError, match=r"UNet has no setting\(s\) \['channel_multt'\]"):
    networks.build(c)


def test_architectures_as_config_file():
  assert set(architectures.get_config("sd_v1_unet")) == {"network"}
  assert set(architectures.get_config("vq_f4")) == {"autoencoder"}
  assert set(architectures.get_config("ldm_cin256_v2_class_embedder")) == {"conditioner"}
  with pytest.raises(ValueError, match="architectures.py:sd_v3_unet: choose one of"):
    architectures.get_config("sd_v3_unet")


def test_execution_settings_reach_the_module():
  c = architectures.sd_v1_unet()
  c.dtype, c.attention_impl, c.remat = "bfloat16", "cudnn", True
  unet = networks.build(c)
  assert (unet.dtype, unet.attention_impl, unet.remat) == (jax.numpy.bfloat16, "cudnn", True)
  c.dtype = "float8"
  with pytest.raises(ValueError, match="dtype='float8'"):
    networks.build(c)
