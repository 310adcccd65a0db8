"""Text encoders imported from the layouts people hold, against the code that defines them.

* transformers' CLIPTextModel (SD 1.x files, diffusers folders): quick_gelu and gelu, the
  last layer and the penultimate one (SD 2.x's choice) through the final LayerNorm;
* OpenCLIP's text tower in SD 2.x's single-file layout (q|k|v stacked), through Stability's
  own FrozenOpenCLIPEmbedder code (stable-diffusion-sdkit's `ldm`), 'last' and 'penultimate';
* LDM's BERTEmbedder: tests/convert/compvis_reference_test.py.
All with random weights at small sizes, fp32; the bound is 1e-5 relative (measured ~5e-7).
"""

import ml_collections
import numpy as np
import pytest
from safetensors.numpy import save_file

from ldm_jax.convert import load
from ldm_jax.convert import text_encoders
from ldm_jax.convert import torch_weights
from ldm_jax.models import factory
from tests import references
from tests import torch_reference as ref

torch = ref.torch
transformers = references.require("transformers")

TOLERANCE = 1e-5
VOCAB, WIDTH, HEADS, MLP, LENGTH = 300, 64, 4, 96, 77


def _block(depth: int, activation: str, output_layer: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      type="clip", vocab_size=VOCAB, max_length=LENGTH, width=WIDTH, depth=depth, heads=HEADS,
      mlp_width=MLP, activation=activation, output_layer=output_layer))


def _tokens(seed: int = 0) -> np.ndarray:
  """Two prompts' ids: bos, words, eos, then padding (eos for one row, 0 for the other)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB - 2, (2, LENGTH))
  tokens[:, 0] = VOCAB - 2
  tokens[0, 9:] = VOCAB - 1
  tokens[1, 30] = VOCAB - 1
  tokens[1, 31:] = 0
  return tokens


def _ours(path: str, block, tokens) -> np.ndarray:
  params = load.import_conditioner(path, block)
  return np.asarray(factory.build_conditioner(block).apply({"params": params},
                                                          tokens.astype(np.int32)))


def _hf_model(activation: str, depth: int = 3):
  config = transformers.CLIPTextConfig(
      vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=depth,
      num_attention_heads=HEADS, max_position_embeddings=LENGTH, hidden_act=activation,
      bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 1)
  model = transformers.CLIPTextModel(config).eval()
  ref.randomize(model, seed=3)
  return model


@pytest.mark.parity
@pytest.mark.parametrize("activation,output_layer,prefix", [
    ("quick_gelu", -1, "cond_stage_model.transformer.text_model."),  # SD 1.x single file.
    ("gelu", -2, "cond_stage_model.transformer."),  # Files saved without `text_model.`.
    ("quick_gelu", -2, "text_model."),  # A diffusers text_encoder/ folder's names.
])
def test_clip_text_model_import_matches_transformers(tmp_path, activation, output_layer,
                                                     prefix):
  model = _hf_model(activation)
  state = {prefix + k.removeprefix("text_model."): v.numpy()
           for k, v in model.state_dict().items()}
  state[prefix + "embeddings.position_ids"] = np.zeros((1, LENGTH), np.int64)  # Ignored.
  path = str(tmp_path / "clip.safetensors")
  save_file(state, path)
  tokens = _tokens()
  with torch.no_grad():
    out = model(torch.from_numpy(tokens), output_hidden_states=True)
    inner = getattr(model, "text_model", model)
    expected = (out.last_hidden_state if output_layer == -1 else
                inner.final_layer_norm(out.hidden_states[output_layer])).numpy()
  error = ref.relative_error(_ours(path, _block(3, activation, output_layer), tokens), expected)
  print(f"CLIPTextModel {activation} layer {output_layer}: relative error {error:.2e}")
  assert error <= TOLERANCE


def _stability_openclip_embedder(layer: str, depth: int):
  """Stability's FrozenOpenCLIPEmbedder (SD 2.x) around a random OpenCLIP text tower.

  Built without its constructor (which downloads ViT-H-14 weights): its `model` is an
  open_clip TextTransformer whose blocks run sequence-first, as the open_clip release SD 2
  was written for (the embedder permutes to LND itself)."""
  encoders = references.require("ldm.modules.encoders.modules")
  open_clip = references.require("open_clip")
  tower = open_clip.transformer.TextTransformer(
      context_length=LENGTH, vocab_size=VOCAB, width=WIDTH, heads=HEADS, layers=depth,
      mlp_ratio=MLP / WIDTH, output_dim=32)
  tower.transformer = open_clip.transformer.Transformer(
      width=WIDTH, layers=depth, heads=HEADS, mlp_ratio=MLP / WIDTH, batch_first=False)
  ref.randomize(tower, seed=5)
  tower.eval()
  embedder = encoders.FrozenOpenCLIPEmbedder.__new__(encoders.FrozenOpenCLIPEmbedder)
  torch.nn.Module.__init__(embedder)
  embedder.model = tower
  embedder.layer = layer
  embedder.layer_idx = {"last": 0, "penultimate": 1}[layer]
  return embedder


@pytest.mark.parity
@pytest.mark.parametrize("layer", ["last", "penultimate"])
def test_open_clip_layout_import_matches_stability_embedder(tmp_path, layer):
  depth = 3
  embedder = _stability_openclip_embedder(layer, depth)
  state = {f"cond_stage_model.model.{k}": v.numpy()
           for k, v in embedder.model.state_dict().items()}
  state["cond_stage_model.model.logit_scale"] = np.ones((), np.float32)  # Left out.
  assert any(k.endswith("attn.in_proj_weight") for k in state)
  assert text_encoders.layout_of(state) == "open_clip"
  path = str(tmp_path / "sd2.safetensors")
  save_file(state, path)
  tokens = _tokens(1)
  with torch.no_grad():
    expected = embedder.encode_with_transformer(torch.from_numpy(tokens)).numpy()
  block = _block(depth, "gelu", -1 if layer == "last" else -2)
  error = ref.relative_error(_ours(path, block, tokens), expected)
  print(f"OpenCLIP {layer}: relative error {error:.2e}")
  assert error <= TOLERANCE


def test_clip_import_errors(tmp_path):
  model = _hf_model("quick_gelu")
  state = {f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}":
           v.numpy() for k, v in model.state_dict().items()}
  path = str(tmp_path / "clip.safetensors")
  save_file(state, path)
  wider = _block(3, "quick_gelu", -1)
  wider.width = 2 * WIDTH
  with pytest.raises(torch_weights.WeightMismatchError, match="wrong shape"):
    load.import_conditioner(path, wider)
  deeper = _block(4, "quick_gelu", -1)  # The file has 3 blocks.
  with pytest.raises(torch_weights.WeightMismatchError, match="layers_3"):
    load.import_conditioner(path, deeper)
  bert = str(tmp_path / "bert.safetensors")
  save_file({"cond_stage_model.transformer.attn_layers.layers.0.0.weight":
             np.ones((4,), np.float32)}, bert)
  with pytest.raises(ValueError, match="no CLIP text encoder"):
    load.import_conditioner(bert, _block(3, "quick_gelu", -1))
  with pytest.raises(ValueError, match="output_layer=-4"):
    factory.build_conditioner(_block(3, "quick_gelu", -4))
  with pytest.raises(ValueError, match="activation='relu'"):
    factory.build_conditioner(_block(3, "relu", -1))
