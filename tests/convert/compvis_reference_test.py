"""Imports of CompVis checkpoints against the CompVis / Stability model code itself.

The reference is the original `ldm` package (SD 2.x code, as packaged on PyPI by
stable-diffusion-sdkit; `make test` puts it in .venv/compvis-reference without its
dependencies, and tests/conftest.py adds that folder to sys.path): its modules are
built with random weights, their state dicts saved as a CompVis checkpoint, imported, and the
outputs compared. This covers what diffusers' converters do not: openai attention blocks
with a fused qkv (LDM celebahq256), attention inside autoencoder levels, label embeddings.
"""

import ml_collections
import numpy as np
import pytest

from configs import architectures
from ldm_jax.convert import compvis
from ldm_jax.convert import load
from ldm_jax.models import factory
from ldm_jax.models import networks
from tests import references
from tests import torch_reference as ref

openaimodel = references.require("ldm.modules.diffusionmodules.openaimodel")
vae_modules = references.require("ldm.modules.diffusionmodules.model")
torch = ref.torch
from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

TOLERANCE = 1e-4
UNETS = {
    "sd1_like": dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(1, 2), num_heads=2, context_dim=16),
    "sd2_like": dict(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                     attention_resolutions=(2, 4), num_heads=-1, num_head_channels=16,
                     linear_projection=True, transformer_depth=2, context_dim=24),
    "celebahq_like_class_scale_shift": dict(
        model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
        attention_resolutions=(2, 4), num_heads=-1, num_head_channels=16,
        use_spatial_transformer=False, context_dim=None, num_classes=6, scale_shift=True,
        in_channels=3, out_channels=3),
}


def _compvis_unet(block):
  return openaimodel.UNetModel(
      image_size=16, in_channels=block.in_channels, out_channels=block.out_channels,
      model_channels=block.model_channels, num_res_blocks=block.num_res_blocks,
      attention_resolutions=list(block.attention_resolutions),
      channel_mult=tuple(block.channel_mult), num_heads=block.num_heads,
      num_head_channels=block.num_head_channels, num_classes=block.num_classes,
      use_scale_shift_norm=block.scale_shift,
      use_spatial_transformer=block.use_spatial_transformer,
      transformer_depth=block.transformer_depth,
      # Their SpatialTransformer takes one context width per depth when depth > 1.
      context_dim=[block.context_dim] * block.transformer_depth if block.context_dim else None,
      use_linear_in_transformer=block.linear_projection, legacy=False)


@pytest.mark.parity
@pytest.mark.parametrize("name", list(UNETS))
def test_unet_checkpoint_from_compvis_code(name, tmp_path):
  block = architectures._unet(**UNETS[name])  # pylint: disable=protected-access
  theirs = _compvis_unet(block)
  ref.randomize(theirs, seed=6)
  theirs.eval()
  path = str(tmp_path / "model.safetensors")
  save_file({compvis.UNET_PREFIX + k: v.numpy() for k, v in theirs.state_dict().items()},
            path)
  params = load.import_unet(path, block)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 16, 16, block.in_channels)).astype(np.float32)
  t = np.array([3, 811], np.int64)
  context = (rng.standard_normal((2, 4, block.context_dim)).astype(np.float32)
             if block.context_dim else None)
  y = np.array([1, 5], np.int64) if block.num_classes else None
  with torch.no_grad():
    expected = theirs(ref.nchw(x), torch.from_numpy(t),
                      context=None if context is None else
                      [torch.from_numpy(context)] * block.transformer_depth,
                      y=None if y is None else torch.from_numpy(y))
  out = networks.build(block).apply({"params": params}, x, t, context, y)
  error = ref.relative_error(out, ref.nhwc(expected))
  print(f"CompVis UNet[{name}] relative error {error:.2e}")
  assert error <= TOLERANCE


@pytest.mark.parity
def test_autoencoder_with_level_attention_from_compvis_code(tmp_path):
  block = architectures._autoencoder(  # pylint: disable=protected-access
      "kl", ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16, 8),
      resolution=32)
  settings = dict(ch=32, out_ch=3, ch_mult=(1, 2, 2), num_res_blocks=1,
                  attn_resolutions=[16, 8], in_channels=3, resolution=32, z_channels=4)
  encoder = vae_modules.Encoder(double_z=True, **settings)
  decoder = vae_modules.Decoder(**settings)
  quant_conv, post_quant_conv = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(4, 4, 1)
  parts = {"encoder": encoder, "decoder": decoder, "quant_conv": quant_conv,
           "post_quant_conv": post_quant_conv}
  state = {}
  for seed, (prefix, module) in enumerate(parts.items()):
    ref.randomize(module, seed=seed)
    module.eval()
    state.update({f"{compvis.AUTOENCODER_PREFIX}{prefix}.{k}": v.numpy()
                  for k, v in module.state_dict().items()})
  assert any(".down.1.attn.0." in k for k in state) and any(".up.2.attn.1." in k
                                                            for k in state)
  state[compvis.AUTOENCODER_PREFIX + "loss.logvar"] = np.zeros((), np.float32)
  path = str(tmp_path / "model.safetensors")
  save_file(state, path)
  params = load.import_autoencoder(path, block)
  model = factory.build_autoencoder(block)
  image = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    moments = quant_conv(encoder(ref.nchw(image)))
    z = moments[:, :4]
    decoded = decoder(post_quant_conv(z))
  posterior = model.apply({"params": params}, image, method=model.encode)
  ours_decoded = model.apply({"params": params}, ref.nhwc(z), method=model.decode)
  errors = {"mean": ref.relative_error(posterior.mean, ref.nhwc(moments[:, :4])),
            "logvar": ref.relative_error(posterior.logvar,
                                         ref.nhwc(torch.clamp(moments[:, 4:], -30, 20))),
            "decode": ref.relative_error(ours_decoded, ref.nhwc(decoded))}
  print(f"CompVis autoencoder relative errors {errors}")
  assert max(errors.values()) <= TOLERANCE


@pytest.mark.parity
def test_text_encoder_from_ldm_bert_embedder(tmp_path):
  """LDM's tau_theta is an x-transformers TransformerWrapper (0.15 layout) over BERT ids."""
  x_transformers = references.require("x_transformers")
  theirs = x_transformers.TransformerWrapper(
      num_tokens=100, max_seq_len=16,
      attn_layers=x_transformers.Encoder(dim=48, depth=2))
  ref.randomize(theirs, seed=8)
  theirs.eval()
  state = {f"{compvis.CONDITIONER_PREFIX}transformer.{k}": v.numpy()
           for k, v in theirs.state_dict().items()}
  assert any(".to_logits." in k for k in state)
  path = str(tmp_path / "txt2img.safetensors")
  save_file(state, path)
  block = ml_collections.ConfigDict(dict(
      type="text", vocab_size=100, max_length=16, width=48, depth=2, heads=8, head_dim=64))
  params = load.import_conditioner(path, block)
  tokens = np.random.default_rng(3).integers(0, 100, (2, 16)).astype(np.int64)
  with torch.no_grad():
    expected = theirs(torch.from_numpy(tokens), return_embeddings=True)
  out = factory.build_conditioner(block).apply({"params": params}, tokens.astype(np.int32))
  error = ref.relative_error(out, expected.numpy())
  print(f"LDM text encoder relative error {error:.2e}")
  assert error <= TOLERANCE
