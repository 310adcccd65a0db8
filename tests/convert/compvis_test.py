"""CompVis names against diffusers' own CompVis converters, and imports end to end."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import architectures
from ldm_jax.convert import compvis
from ldm_jax.convert import export
from ldm_jax.convert import load
from ldm_jax.convert import torch_weights
from ldm_jax.models import factory
from ldm_jax.models import networks
from ldm_jax.convert import diffusers_configs
from tests import references
from tests import torch_reference as ref

diffusers = references.require("diffusers")
single_file_utils = references.require("diffusers.loaders.single_file_utils")
torch = ref.torch
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

UNETS = {
    "sd1_like": dict(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
                     attention_resolutions=(1, 2), num_heads=2, context_dim=16),
    "sd2_like": dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_heads=-1, num_head_channels=16,
                     linear_projection=True, transformer_depth=2, context_dim=24),
}
AUTOENCODERS = {
    # diffusers' converter maps attention only in the middle block (as in the SD VAE).
    "kl_mid_attention": dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, resolution=32),
    "kl": dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,),
               resolution=32),
    "vq": dict(ch=32, ch_mult=(1, 2), num_res_blocks=2, z_channels=3, embed_dim=3,
               n_embed=32, resolution=32),
}


def _unet(name):
  block = architectures._unet(**UNETS[name])  # pylint: disable=protected-access
  block.groups = 8
  theirs = diffusers.UNet2DConditionModel(
      **diffusers_configs.unet_condition_kwargs(block.to_dict()))
  ref.randomize(theirs, seed=4)
  return block, theirs.eval()


def _autoencoder(name):
  kind = "vq" if name == "vq" else "kl"
  block = architectures._autoencoder(kind, **AUTOENCODERS[name])  # pylint: disable=protected-access
  blocks = diffusers_configs.autoencoder_kwargs(block.to_dict())
  if kind == "kl":
    theirs = diffusers.AutoencoderKL(latent_channels=block.z_channels, **blocks)
  else:
    theirs = diffusers.VQModel(latent_channels=block.z_channels, vq_embed_dim=block.embed_dim,
                               num_vq_embeddings=block.n_embed, **blocks)
  ref.randomize(theirs, seed=5)
  return block, theirs.eval()


@pytest.mark.parity
@pytest.mark.parametrize("name", list(UNETS))
def test_unet_names_agree_with_diffusers_converter(name):
  block, theirs = _unet(name)
  compvis_state = {k: torch.from_numpy(v) for k, v in ref.compvis_unet_state(block,
                                                                           theirs).items()}
  converted = single_file_utils.convert_ldm_unet_checkpoint(compvis_state, theirs.config)
  original = theirs.state_dict()
  assert sorted(converted) == sorted(original)
  for key, value in original.items():
    np.testing.assert_array_equal(converted[key].numpy(), value.numpy(), err_msg=key)


@pytest.mark.parity
@pytest.mark.parametrize("name", ["kl_mid_attention"])
def test_autoencoder_names_agree_with_diffusers_converter(name):
  block, theirs = _autoencoder(name)
  compvis_state = {k: torch.from_numpy(v) for k, v in
                   ref.compvis_autoencoder_state(block, theirs).items()}
  converted = single_file_utils.convert_ldm_vae_checkpoint(compvis_state, theirs.config)
  original = theirs.state_dict()
  assert sorted(converted) == sorted(original)
  for key, value in original.items():
    np.testing.assert_allclose(np.reshape(converted[key].numpy(), value.shape),
                               value.numpy(), err_msg=key)


def _unet_output(block, params, seed=0):
  x, t, context, _ = networks.example_inputs(block)
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, 8, 8, block.in_channels)).astype(np.float32)
  context = rng.standard_normal((2, 3, block.context_dim)).astype(np.float32)
  t = np.array([5, 600], np.int32)
  return networks.build(block).apply({"params": params}, x, t, context), (x, t, context)


@pytest.mark.parity
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_compvis_single_file_import_matches_diffusers(tmp_path, suffix):
  block, unet = _unet("sd1_like")
  vae_block, vae = _autoencoder("kl")
  state = {**ref.compvis_unet_state(block, unet),
           **ref.compvis_autoencoder_state(vae_block, vae)}
  ema = {"model_ema." + "".join(k.split(".")[1:]): 0.5 * v
         for k, v in state.items() if k.startswith(compvis.UNET_PREFIX)}
  state.update(ema)
  path = str(tmp_path / f"model{suffix}")
  if suffix == ".safetensors":
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
  else:
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in state.items()},
                "global_step": 7}, path)
  params = load.import_unet(path, block)
  out, (x, t, context) = _unet_output(block, params)
  with torch.no_grad():
    expected = unet(ref.nchw(x), torch.from_numpy(t).long(),
                    encoder_hidden_states=torch.from_numpy(context)).sample
  assert ref.relative_error(out, ref.nhwc(expected)) <= 1e-4
  ema_params = load.import_unet(path, block, use_ema=True)
  np.testing.assert_allclose(ema_params["conv_in"]["kernel"],
                             0.5 * np.asarray(params["conv_in"]["kernel"]))
  vae_params = load.import_autoencoder(path, vae_block)
  image = np.random.default_rng(1).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
  model = factory.build_autoencoder(vae_block)
  mean = model.apply({"params": vae_params}, image, method=model.encode).mean
  with torch.no_grad():
    expected_mean = vae.encode(ref.nchw(image)).latent_dist.mean
  assert ref.relative_error(mean, ref.nhwc(expected_mean)) <= 1e-4


def test_compvis_extra_key_is_reported(tmp_path):
  block, unet = _unet("sd2_like")
  state = ref.compvis_unet_state(block, unet)
  state[compvis.UNET_PREFIX + "input_blocks.99.0.op.weight"] = np.zeros((1,), np.float32)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file(state, str(tmp_path / "m.safetensors"))
  with pytest.raises(torch_weights.WeightMismatchError,
                     match=r"unexpected.*\n.*input_blocks\.99\.0\.op\.weight"):
    load.import_unet(str(tmp_path / "m.safetensors"), block)


@pytest.mark.parity
def test_sharded_diffusers_folder_and_cli(tmp_path):
  block, vae = _autoencoder("vq")
  folder = str(tmp_path / "vq")
  vae.save_pretrained(folder, max_shard_size="200KB")
  assert os.path.exists(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json"))
  params = load.import_autoencoder(folder, block)
  reference = torch_weights.to_flax(vae.state_dict(), factory.param_shapes(
      factory.build_autoencoder(block), factory.autoencoder_example_inputs(block)))
  for a, b in zip(ref.jax.tree_util.tree_leaves(params),
                  ref.jax.tree_util.tree_leaves(reference)):
    np.testing.assert_array_equal(a, b)
  config_file = tmp_path / "vq_config.py"
  config_file.write_text(
      "from configs import architectures\n"
      "def get_config():\n"
      "  import ml_collections\n"
      "  c = ml_collections.ConfigDict()\n"
      f"  c.autoencoder = architectures._autoencoder('vq', **{AUTOENCODERS['vq']!r})\n"
      "  return c\n")
  out = tmp_path / "converted"
  command = [sys.executable, "-m", "ldm_jax.convert", folder, f"--config={config_file}",
             f"--out={out}"]
  env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": ROOT}
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  restored = export.read(str(out), "autoencoder")
  for a, b in zip(ref.jax.tree_util.tree_leaves(restored),
                  ref.jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert export.read_config(str(out)).autoencoder.n_embed == 32
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=300)
  assert again.returncode != 0 and "never written over" in again.stderr


def test_old_diffusers_attention_names(tmp_path):
  block, vae = _autoencoder("kl")
  old = {}
  for key, value in vae.state_dict().items():
    for new, legacy in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
                        (".to_out.0.", ".proj_attn.")):
      key = key.replace(new, legacy)
    old[key] = value.numpy()
  assert any(".proj_attn." in k for k in old)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file(old, str(tmp_path / "diffusion_pytorch_model.safetensors"))
  params = load.import_autoencoder(str(tmp_path / "diffusion_pytorch_model.safetensors"),
                                   block)
  np.testing.assert_array_equal(
      params["encoder"]["mid_block/attentions_0"]["to_out_0"]["kernel"],
      vae.state_dict()["encoder.mid_block.attentions.0.to_out.0.weight"].numpy().T)


def test_class_embedder_from_compvis_checkpoint(tmp_path):
  block = architectures.ldm_cin256_v2_class_embedder()
  table = np.random.default_rng(0).standard_normal((1000, 512)).astype(np.float32)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({"cond_stage_model.embedding.weight": table,
             "model.diffusion_model.conv_in.weight": np.zeros((1,), np.float32)},
            str(tmp_path / "cin.safetensors"))
  params = load.import_conditioner(str(tmp_path / "cin.safetensors"), block)
  model = factory.build_conditioner(block)
  context = model.apply({"params": params}, np.array([7, 999]))
  np.testing.assert_array_equal(context[:, 0], table[[7, 999]])
  block.add_null_class = True  # A 1,001-row table cannot take the released 1,000 rows.
  with pytest.raises(torch_weights.WeightMismatchError, match=r"\(1000, 512\).*\(1001, 512\)"):
    load.import_conditioner(str(tmp_path / "cin.safetensors"), block)
