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
