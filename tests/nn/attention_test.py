"""Attention kernels: XLA against a plain softmax, and cuDNN flash against XLA on a GPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.nn import attention


def _qkv(dtype, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal((2, 64, 4, 32)), dtype) for _ in range(3)]


def test_xla_attention_is_softmax_attention():
  q, k, v = _qkv(jnp.float32)
  logits = jnp.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(32)
  expected = jnp.einsum("bnqk,bknd->bqnd", jax.nn.softmax(logits, axis=-1), v)
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, "xla"), expected,
                             rtol=1e-5, atol=1e-5)


def test_causal_attention_sees_only_earlier_positions():
  q, k, v = _qkv(jnp.float32)
  out = attention.dot_product_attention(q, k, v, "xla", is_causal=True)
  # Position i of a causal pass is the plain attention over the first i + 1 positions.
  for i in (0, 5, 63):
    plain = attention.dot_product_attention(q[:, i:i + 1], k[:, :i + 1], v[:, :i + 1], "xla")
    np.testing.assert_allclose(out[:, i:i + 1], plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_logits_are_float32(dtype):
  """SD 2.1's `upcast_attention`: q k^T of half-precision inputs is accumulated and
  soft-maxed in float32. Here it reaches 8.7e4, past float16's 65504, and the result still
  equals the float32 computation on the same (rounded) inputs."""
  q, k, v = (x * s for x, s in zip(_qkv(jnp.float32, seed=1), (60.0, 60.0, 1.0)))
  q, k, v = (x.astype(dtype) for x in (q, k, v))
  logits = jnp.einsum("bqnd,bknd->bnqk", q.astype(jnp.float32), k.astype(jnp.float32))
  assert float(jnp.abs(logits).max()) > 65504.0
  expected = attention.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                             "xla")
  out = attention.dot_product_attention(q, k, v, "xla")
  assert out.dtype == dtype and bool(jnp.isfinite(out).all())
  np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=0.02 if dtype ==
                             jnp.bfloat16 else 2e-3)


def test_unknown_implementation():
  q, k, v = _qkv(jnp.float32)
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    attention.dot_product_attention(q, k, v, "flash")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_flash_equals_xla_on_gpu():
  q, k, v = _qkv(jnp.bfloat16)
  xla = attention.dot_product_attention(q, k, v, "xla").astype(jnp.float32)
  cudnn = attention.dot_product_attention(q, k, v, "cudnn").astype(jnp.float32)
  np.testing.assert_allclose(cudnn, xla, rtol=2e-2, atol=2e-2)
