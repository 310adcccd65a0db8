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
  c.dtype, c.attention_impl, c.remat = "bfloat16", "cudnn", "dots"
  unet = networks.build(c)
  assert (unet.dtype, unet.attention_impl, unet.remat) == (jax.numpy.bfloat16, "cudnn", "dots")
  c.dtype = "float8"
  with pytest.raises(ValueError, match="dtype='float8'"):
    networks.build(c)


def _text_encoder_reference(name: str) -> int:
  """Parameters of the reference text encoder `name` stands for."""
  transformers = references.require("transformers")
  if name == "ldm_bert":  # LDM's BERTEmbedder, without its unused language-model head.
    x_transformers = references.require("x_transformers")
    with torch.device("meta"):
      model = x_transformers.TransformerWrapper(
          num_tokens=30522, max_seq_len=77,
          attn_layers=x_transformers.Encoder(dim=1280, depth=32))
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("to_logits"))
  # diffusers' SD pipelines: CLIPTextModel; SD 2's is OpenCLIP-H's tower cut to 23 layers.
  kwargs = {"sd_v1_text_encoder": dict(hidden_size=768, intermediate_size=3072,
                                       num_hidden_layers=12, num_attention_heads=12,
                                       hidden_act="quick_gelu"),
            "sd_v2_text_encoder": dict(hidden_size=1024, intermediate_size=4096,
                                       num_hidden_layers=23, num_attention_heads=16,
                                       hidden_act="gelu")}[name]
  return _theirs(transformers.CLIPTextModel, config=transformers.CLIPTextConfig(
      vocab_size=49408, max_position_embeddings=77, **kwargs))


@pytest.mark.parity
@pytest.mark.parametrize("name", ["sd_v1_text_encoder", "sd_v2_text_encoder", "ldm_bert"])
def test_text_encoder_parameter_count_equals_reference(name):
  c = architectures.CONDITIONERS[name]()
  ours = _ours(factory.build_conditioner(c), *factory.conditioner_example_inputs(c))
  theirs = _text_encoder_reference(name)
  print(f"{name}: {ours:,} parameters (reference {theirs:,})")
  assert ours == theirs
  # The published sizes: SD 1's and SD 2's text encoders, LDM-KL-8-G's 1.45B minus its UNet.
  assert ours == {"sd_v1_text_encoder": 123_060_480, "sd_v2_text_encoder": 340_387_840,
                  "ldm_bert": 542_895_360}[name]
