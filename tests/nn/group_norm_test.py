"""The hand-written GroupNorm gradient against PyTorch's GroupNorm (float64) and against
autodiff of the plain formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.nn import group_norm as group_norm_lib
from ldm_jax.nn import layers
from tests import references

SHAPES = [((3, 6, 5, 64), 32), ((2, 9, 24), 8), ((2, 3, 4, 5, 16), 4), ((4, 32), 8)]


def _inputs(shape, seed=0):
  rng = np.random.default_rng(seed)
  channels = shape[-1]
  # An offset mean and uneven scale per channel; a cotangent unrelated to the output.
  x = rng.standard_normal(shape) * rng.uniform(0.5, 3, channels) + rng.uniform(-4, 4, channels)
  return (x, 1 + 0.3 * rng.standard_normal(channels), rng.standard_normal(channels),
          rng.standard_normal(shape))


@pytest.mark.parametrize("shape,groups", SHAPES)
def test_value_and_gradients_equal_torch_group_norm(shape, groups):
  torch = references.require("torch")
  x, scale, bias, cotangent = _inputs(shape)
  tx, tscale, tbias = (torch.tensor(a, requires_grad=True) for a in (x, scale, bias))
  # torch's layout is channels-first: move the last axis to axis 1 and back.
  out = torch.nn.functional.group_norm(torch.movedim(tx, -1, 1), groups, tscale, tbias, 1e-5)
  out = torch.movedim(out, 1, -1)
  out.backward(torch.tensor(cotangent))
  with jax.enable_x64(True):
    ours, vjp = jax.vjp(lambda *a: group_norm_lib.group_norm(*a, groups, 1e-5),
                        *(jnp.asarray(a) for a in (x, scale, bias)))
    grads = vjp(jnp.asarray(cotangent))
  np.testing.assert_allclose(ours, out.detach().numpy(), rtol=1e-12, atol=1e-12)
  for name, ours_grad, theirs in zip(("x", "scale", "bias"), grads, (tx, tscale, tbias)):
    np.testing.assert_allclose(ours_grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-10,
                               err_msg=f"d/d{name}")


def _plain(x, scale, bias, groups, epsilon):
  grouped = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
  axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
  mean = grouped.mean(axis=axes, keepdims=True)
  var = jnp.square(grouped - mean).mean(axis=axes, keepdims=True)
  return ((grouped - mean) * jax.lax.rsqrt(var + epsilon)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_module_matches_autodiff_of_the_formula(dtype):
  """layers.GroupNorm (float32 inside whatever the compute dtype) under jit, second-order
  through the custom rule's own autodiff too (grad of a grad-norm penalty)."""
  x, _, _, cotangent = _inputs((2, 8, 8, 64), seed=1)
  x = jnp.asarray(x, dtype)
  module = layers.GroupNorm(32, 1e-6, dtype=dtype)
  params = module.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape),
                        params)
  scale, bias = params["params"]["scale"], params["params"]["bias"]

  def loss(apply):
    return lambda x: jnp.sum(apply(x).astype(jnp.float32) * cotangent)

  ours = loss(lambda x: module.apply(params, x))
  plain = loss(lambda x: _plain(x.astype(jnp.float32), scale, bias, 32, 1e-6).astype(dtype))
  tol = 1e-4 if dtype == jnp.float32 else 2e-2
  for fn in (jax.grad, lambda f: jax.grad(lambda x: jnp.sum(jnp.square(jax.grad(f)(x))))):
    expected, got = jax.jit(fn(plain))(x), jax.jit(fn(ours))(x)
    scale_of = float(jnp.max(jnp.abs(expected.astype(jnp.float32))))
    np.testing.assert_allclose(got.astype(jnp.float32) / scale_of,
                               expected.astype(jnp.float32) / scale_of, atol=tol)


def test_empty_batch():
  x = jnp.zeros((0, 4, 4, 8))
  out, vjp = jax.vjp(lambda x: group_norm_lib.group_norm(x, jnp.ones(8), jnp.zeros(8), 4, 1e-5),
                     x)
  assert out.shape == x.shape and vjp(out)[0].shape == x.shape
