"""UNet properties that need no reference: dtypes, remat, input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.models.unet import UNet

SMALL = dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2),
             num_res_blocks=1, attention_resolutions=(2,), num_heads=2, context_dim=8,
             groups=8)


def _inputs():
  rng = np.random.default_rng(0)
  return (rng.standard_normal((2, 8, 8, 4)).astype(np.float32), np.array([3, 900]),
          rng.standard_normal((2, 3, 8)).astype(np.float32))


@pytest.fixture(scope="module")
def params():
  # Random values for every parameter (a fresh UNet's zero-initialised output layers would
  # make its output zero); built from shapes alone, so nothing is compiled.
  x, t, context = _inputs()
  shapes = jax.eval_shape(lambda: UNet(**SMALL).init(jax.random.key(0), x, t, context))
  rng = np.random.default_rng(1)
  return jax.tree_util.tree_map(
      lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]) or 1)).astype(
          np.float32), shapes["params"])


def test_bfloat16_compute_keeps_float32_params(params):
  x, t, context = _inputs()
  out32 = jax.jit(UNet(**SMALL).apply)({"params": params}, x, t, context)
  out16 = jax.jit(UNet(**SMALL, dtype=jnp.bfloat16).apply)({"params": params}, x, t, context)
  assert out16.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  error = float(jnp.abs(out16.astype(jnp.float32) - out32).max() / jnp.abs(out32).max())
  assert error < 5e-2, error


def _gradients(params, **kwargs):
  x, t, context = _inputs()
  return jax.jit(jax.grad(lambda p: jnp.mean(
      UNet(**SMALL, **kwargs).apply({"params": p}, x, t, context) ** 2)))(params)


@pytest.fixture(scope="module")
def plain_gradients(params):
  return _gradients(params)


@pytest.mark.parametrize("policy", [True, "dots", "dots_no_batch"])
def test_remat_changes_nothing_but_memory(params, plain_gradients, policy):
  plain, remat = plain_gradients, _gradients(params, remat=policy)
  # Recomputing reorders float32 rounding only, but small leaves carry the rounding of large
  # ones: attention q/k kernels (gradients ~2e-4, through a softmax) differ by up to 1.4e-5 of
  # their own scale, 1.3e-7 of the largest gradient (8e-9 at XLA's default optimisation
  # level). So the absolute bound scales with the largest gradient.
  largest = max(float(np.abs(b).max()) for b in jax.tree_util.tree_leaves(plain))
  for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * largest)


def test_unknown_remat_policy_is_named(params):
  with pytest.raises(ValueError, match=r"remat='dot': expected False/True or one of"):
    UNet(**SMALL, remat="dot").apply({"params": params}, *_inputs())


@pytest.mark.parametrize("bad,message", [
    (dict(x=np.zeros((1, 8, 8, 3), np.float32)), "3 channels; in_channels=4"),
    (dict(y=np.array([1])), "class labels y are given but num_classes=None"),
])
def test_input_errors(bad, message):
  x, t, context = _inputs()
  args = dict(x=x, t=t, context=context, y=None)
  args.update(bad)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: UNet(**SMALL).init(jax.random.key(0), **args))
