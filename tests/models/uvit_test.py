"""The U-ViT and its parts: the transformer block against PyTorch's, the scanned stack, the
5/3 wavelet against PyWavelets, and the network's stems, conditioning and errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.models import networks
from ldm_jax.models.uvit import UViT
from ldm_jax.nn import layers
from ldm_jax.nn import transformer
from ldm_jax.nn import wavelet

WIDTH, HEADS, TOKENS = 32, 4, 10


def _tokens(seed=0, batch=2):
  return np.random.default_rng(seed).standard_normal((batch, TOKENS, WIDTH)).astype(np.float32)


def _randomized(params, seed=1):
  """Every parameter drawn anew (the zero-initialised ones too), so nothing cancels."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [
      (0.2 * rng.standard_normal(x.shape)).astype(np.float32) + (x if x.ndim == 1 else 0)
      for x in leaves])


def test_block_without_conditioning_is_torch_transformer_encoder_layer():
  torch = pytest.importorskip("torch")
  block = transformer.Block(HEADS)
  x = _tokens()
  params = _randomized(block.init(jax.random.key(0), x)["params"])
  ours = np.asarray(block.apply({"params": params}, x))

  layer = torch.nn.TransformerEncoderLayer(WIDTH, HEADS, dim_feedforward=4 * WIDTH,
                                           dropout=0.0, activation="gelu",
                                           layer_norm_eps=1e-5, batch_first=True,
                                           norm_first=True).double().eval()
  t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
  attn = params["self_attention"]
  with torch.no_grad():
    layer.self_attn.in_proj_weight.copy_(t(np.concatenate(
        [attn[n]["kernel"].T for n in ("to_q", "to_k", "to_v")])))
    layer.self_attn.in_proj_bias.copy_(t(np.concatenate(
        [attn[n]["bias"] for n in ("to_q", "to_k", "to_v")])))
    layer.self_attn.out_proj.weight.copy_(t(attn["to_out_0"]["kernel"].T))
    layer.self_attn.out_proj.bias.copy_(t(attn["to_out_0"]["bias"]))
    for ours_name, theirs in (("mlp_in", layer.linear1), ("mlp_out", layer.linear2)):
      theirs.weight.copy_(t(params[ours_name]["kernel"].T))
      theirs.bias.copy_(t(params[ours_name]["bias"]))
    for ours_name, theirs in (("norm1", layer.norm1), ("norm2", layer.norm2)):
      theirs.weight.copy_(t(params[ours_name]["scale"]))
      theirs.bias.copy_(t(params[ours_name]["bias"]))
    reference = layer(t(x)).numpy()
  # float32 against float64: measured ~1e-6.
  np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


def test_block_modulation_starts_as_identity_and_then_conditions():
  block = transformer.Block(HEADS)
  x, emb = _tokens(), np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
  params = block.init(jax.random.key(0), x, emb)["params"]
  plain = {k: v for k, v in params.items() if k != "modulation"}
  np.testing.assert_allclose(block.apply({"params": params}, x, emb),
                             block.apply({"params": plain}, x), atol=1e-6)
  trained = _randomized(params)
  other = emb[::-1]
  assert not np.allclose(block.apply({"params": trained}, x, emb)[0],
                         block.apply({"params": trained}, x, other)[0])


def test_scanned_stack_equals_its_blocks_one_after_another():
  stack = transformer.Stack(3, HEADS)
  x = _tokens()
  emb = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
  context = np.random.default_rng(4).standard_normal((2, 5, 8)).astype(np.float32)
  params = _randomized(stack.init(jax.random.key(0), x, emb, context)["params"])
  assert params["blocks"]["self_attention"]["to_q"]["kernel"].shape == (3, WIDTH, WIDTH)
  out = stack.apply({"params": params}, x, emb, context)
  h = x
  for i in range(3):
    block_params = jax.tree.map(lambda p, i=i: p[i], params["blocks"])
    h = transformer.Block(HEADS).apply({"params": block_params}, h, emb, context)
  np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-5)
  remat = transformer.Stack(3, HEADS, remat=True).apply({"params": params}, x, emb, context)
  np.testing.assert_allclose(remat, out, rtol=1e-6, atol=1e-6)


def test_wavelet_is_invertible_and_is_pywavelets_bior22():
  pywt = pytest.importorskip("pywt")
  x = np.random.default_rng(0).standard_normal((2, 16, 32, 3))
  with jax.enable_x64(True):
    smooth, detail = jax.jit(wavelet.dwt_1d, static_argnums=1)(jnp.asarray(x), 2)
    approx, det = pywt.dwt(x, "bior2.2", mode="reflect", axis=2)
    # PyWavelets pads one coefficient on each side (its filters are 6 taps long).
    np.testing.assert_allclose(smooth, approx[:, :, 1:17] / math.sqrt(2), atol=1e-12)
    np.testing.assert_allclose(detail, -math.sqrt(2) * det[:, :, 1:17], atol=1e-12)
    coefficients = jax.jit(wavelet.analysis, static_argnums=1)(jnp.asarray(x), 2)
    assert coefficients.shape == (2, 4, 8, 48)
    np.testing.assert_allclose(jax.jit(wavelet.synthesis, static_argnums=1)(coefficients, 2),
                               x, atol=1e-12)
  x32 = x.astype(np.float32)
  round_trip = jax.jit(lambda x: wavelet.synthesis(wavelet.analysis(x, 3), 3))
  np.testing.assert_allclose(round_trip(x32), x32, atol=2e-5)
  # A constant image has no detail: all its energy stays in the LL band.
  flat = wavelet.dwt_2d(np.ones((1, 8, 8, 1), np.float32))
  np.testing.assert_allclose(flat[..., 0], 1.0)
  np.testing.assert_allclose(flat[..., 1:], 0.0, atol=1e-7)
  with pytest.raises(ValueError, match=r"sides divisible by 8; got shape \(2, 12, 32, 3\)"):
    wavelet.analysis(x32[:, :12], 3)


def test_logsnr_time_inverts_the_cosine_schedule():
  t = np.linspace(0.01, 0.99, 7)
  logsnr = -2 * np.log(np.tan(np.pi * t / 2))
  np.testing.assert_allclose(layers.logsnr_time(logsnr), 1000 * t, rtol=1e-5)
  np.testing.assert_allclose(layers.logsnr_time(np.array([-50.0, 50.0])),
                             layers.logsnr_time(np.array([-20.0, 20.0])))


def _small(**kw):
  base = dict(in_channels=3, out_channels=3, channels=(32,), num_res_blocks=1,
              transformer_width=32, transformer_depth=2, head_dim=16, num_classes=11)
  return UViT(**{**base, **kw})


@pytest.mark.parametrize("stem,patch", [("patch", 1), ("patch", 2), ("wavelet", 2)])
def test_uvit_stems_keep_the_shape_and_the_head_starts_at_zero(stem, patch):
  net = _small(stem=stem, patch_size=patch, attention_levels=(0,))
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  y = np.array([3, 10], np.int32)
  params = jax.jit(net.init)(jax.random.key(0), x, np.array([-3.0, 5.0]), None, y)["params"]
  apply = jax.jit(lambda p, time, y: net.apply({"params": p}, x, time, None, y))
  out = apply(params, np.array([-3.0, 5.0]), y)
  assert out.shape == x.shape and float(jnp.abs(out).max()) == 0.0  # Zero-initialised head.
  trained = _randomized(params)
  out = apply(trained, np.array([-3.0, 5.0]), y)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  # Time and label reach the output.
  assert not np.allclose(out, apply(trained, np.array([4.0, 5.0]), y))
  assert not np.allclose(out, apply(trained, np.array([-3.0, 5.0]), np.array([4, 10], np.int32)))


def test_uvit_context_dropout_precision_and_errors():
  net = _small(context_dim=8, dropout=0.5)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  y, time = np.array([1, 2], np.int32), np.zeros(2, np.float32)
  context = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
  params = _randomized(jax.jit(net.init)(jax.random.key(0), x, time, context, y)["params"])
  assert "cross_attention" in params["transformer"]["blocks"]
  apply = jax.jit(lambda p, c: net.apply({"params": p}, x, time, c, y))
  out = apply(params, context)
  assert not np.allclose(out, apply(params, context[::-1]))
  training = _small(context_dim=8, dropout=0.5, deterministic=False)
  train_apply = jax.jit(lambda p, key: training.apply({"params": p}, x, time, context, y,
                                                      rngs={"dropout": key}))
  a, b = (train_apply(params, jax.random.key(k)) for k in (0, 1))
  assert not np.allclose(a, b)  # Dropout is on in training mode.
  bf16 = jax.jit(_small(context_dim=8, dtype=jnp.bfloat16).apply)({"params": params}, x,
                                                                   time, context, y)
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bf16, np.float32), out, atol=0.1 * np.abs(out).max())
  with pytest.raises(ValueError, match=r"input sides \(12, 12\) must be multiples of 8"):
    _small(patch_size=4).init(jax.random.key(0), np.zeros((1, 12, 12, 3)), time[:1], None,
                              y[:1])
  with pytest.raises(ValueError, match="class labels y are missing but num_classes=11"):
    net.apply({"params": params}, x, time, context, None)
  with pytest.raises(ValueError, match="stem='pixelshuffle'"):
    _small(stem="pixelshuffle").init(jax.random.key(0), x, time, None, y)
  with pytest.raises(ValueError, match=r"attention_levels \[3\]"):
    _small(attention_levels=(3,)).init(jax.random.key(0), x, time, None, y)


def test_networks_registry_builds_a_uvit_from_its_block():
  import ml_collections  # pylint: disable=import-outside-toplevel
  block = ml_collections.ConfigDict(dict(
      type="uvit", in_channels=1, out_channels=1, stem="wavelet", patch_size=4, channels=(32,),
      num_res_blocks=1, transformer_width=32, transformer_depth=1, head_dim=16,
      num_classes=None, context_dim=None, dropout=0.0, res_dropout=0.1))
  spec = networks.spec(block)
  assert (spec.type, spec.size_multiple, spec.dropout, spec.logsnr_input) == (
      "uvit", 8, 0.1, True)
  x, t, context, y = networks.example_inputs(block)
  assert x.shape == (1, 8, 8, 1) and context is None and y is None
  net = networks.build(block)
  out = jax.jit(lambda: net.apply(net.init(jax.random.key(0), x, t, context, y), x, t,
                                  context, y))()
  assert out.shape == x.shape
