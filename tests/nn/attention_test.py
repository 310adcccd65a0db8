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


ON_GPU = jax.default_backend() == "gpu"


@pytest.mark.gpu  # Also on a CPU: there 'auto' is always XLA.
@pytest.mark.parametrize("dtype,head_dim,expected", [
    (jnp.bfloat16, 64, "cudnn"), (jnp.float16, 128, "cudnn"), (jnp.float32, 64, "xla"),
    (jnp.bfloat16, 160, "xla"), (jnp.bfloat16, 20, "xla")])
def test_auto_takes_cudnn_where_it_applies(dtype, head_dim, expected):
  q = jnp.zeros((1, 8, 2, head_dim), dtype)
  assert attention.resolve("auto", q, q) == (expected if ON_GPU else "xla")
  assert attention.resolve("xla", q, q) == "xla" and attention.resolve(None, q, q) is None


def _relative_error(x, reference):
  x, reference = (np.asarray(a, np.float64) for a in (x, reference))
  return float(np.linalg.norm(x - reference) / np.linalg.norm(reference))


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="cuDNN attention needs a GPU")
@pytest.mark.parametrize("queries,keys,heads", [(4096, 4096, 5), (1024, 77, 10), (64, 64, 4)])
def test_cudnn_flash_equals_xla_on_gpu(queries, keys, heads):
  """Stable Diffusion 2's shapes (64x64 latents' self-attention, 77-token cross-attention,
  head size 64): cuDNN's output and gradients against XLA's float32 computation on the same
  bf16 inputs, as close as XLA's own bf16 pass is."""
  rng = np.random.default_rng(queries + keys)
  q = jnp.asarray(rng.standard_normal((2, queries, heads, 64)), jnp.bfloat16)
  k, v = (jnp.asarray(rng.standard_normal((2, keys, heads, 64)), jnp.bfloat16)
          for _ in range(2))
  weight = jnp.asarray(rng.standard_normal((2, queries, heads, 64)), jnp.float32)

  def value_and_grads(implementation, dtype):
    def f(q, k, v):
      out = attention.dot_product_attention(q, k, v, implementation)
      return jnp.sum(out.astype(jnp.float32) * weight), out
    args = tuple(x.astype(dtype) for x in (q, k, v))
    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(*args)
    return out, grads

  reference, reference_grads = value_and_grads("xla", jnp.float32)
  for implementation in ("xla", "cudnn"):
    lowered = jax.jit(lambda q, k, v, i=implementation: attention.dot_product_attention(
        q, k, v, i)).lower(q, k, v).as_text()
    assert ("cudnn" in lowered) == (implementation == "cudnn")
    out, grads = value_and_grads(implementation, jnp.bfloat16)
    assert _relative_error(out, reference) < 1e-2, implementation
    for grad, ref in zip(grads, reference_grads):
      assert bool(jnp.isfinite(grad.astype(jnp.float32)).all())
      assert _relative_error(grad, ref) < 2e-2, implementation
