"""Conditioners and tokenizers."""

import jax
import numpy as np
import pytest

from ldm_jax.models import conditioning
from ldm_jax.models import tokenizer as tokenizer_lib
from tests import references


def test_byte_tokenizer_roundtrip_truncation_padding():
  tok = tokenizer_lib.ByteTokenizer()
  ids = tok(["a handwritten digit seven", "", "é" * 40], max_length=16)
  assert ids.shape == (3, 16) and ids.dtype == np.int32
  assert tok.decode(ids[0]) == "a handwritten "  # 14 bytes fit between BOS and EOS.
  assert ids[1].tolist() == [1, 2] + [0] * 14
  assert ids[0, -1] == tok.eos_id and ids.max() < tok.vocab_size


def test_wordpiece_vocab_file(tmp_path):
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "digit", "hand", "##written", "seven"]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  tok = tokenizer_lib.load_tokenizer(str(tmp_path))
  ids = tok(["A handwritten digit SEVEN"], max_length=10)[0]
  assert [vocab[i] for i in ids[:7]] == ["[CLS]", "a", "hand", "##written", "digit", "seven",
                                         "[SEP]"]
  assert ids[7:].tolist() == [0, 0, 0] and tok.vocab_size == len(vocab)


def test_tokenizer_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="expected tokenizer.json"):
    tokenizer_lib.load_tokenizer(str(tmp_path))


def test_class_embedder_has_a_null_class():
  model = conditioning.ClassEmbedder(num_classes=10, embed_dim=8)
  params = model.init(jax.random.key(0), np.array([0]))
  out = model.apply(params, np.array([3, model.null_label]))
  assert out.shape == (2, 1, 8)
  assert jax.tree_util.tree_leaves(params)[0].shape == (11, 8)
  assert not np.allclose(out[0], out[1])


def test_text_encoder_shapes_and_token_sensitivity():
  tok = tokenizer_lib.ByteTokenizer()
  model = conditioning.TextEncoder(vocab_size=tok.vocab_size, max_length=16, width=32,
                                   depth=2, heads=4)
  tokens = tok(["a digit one", "a digit two"], max_length=16)
  params = model.init(jax.random.key(0), tokens)
  out = model.apply(params, tokens)
  assert out.shape == (2, 16, 32)
  # The captions differ only in their last word: every position attends to it.
  assert np.abs(np.asarray(out[0] - out[1])).min(axis=-1).max() > 0
  with pytest.raises(ValueError, match="17 tokens, max_length=16"):
    model.apply(params, np.zeros((1, 17), np.int32))


def test_spatial_rescaler_matches_torch_interpolate():
  torch = references.require("torch")
  x = np.random.default_rng(0).standard_normal((2, 16, 12, 5)).astype(np.float32)
  model = conditioning.SpatialRescaler(n_stages=2, out_channels=3)
  params = model.init(jax.random.key(0), x)
  ours = model.apply(params, x)
  kernel = np.asarray(params["params"]["channel_mapper"]["kernel"])[0, 0]  # (in, out)
  t = torch.from_numpy(x.transpose(0, 3, 1, 2))
  for _ in range(2):
    t = torch.nn.functional.interpolate(t, scale_factor=0.5, mode="bilinear")
  expected = np.einsum("bchw,co->bhwo", t.numpy(), kernel)
  assert ours.shape == (2, 4, 3, 3)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
