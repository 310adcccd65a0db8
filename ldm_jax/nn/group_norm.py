"""Group normalisation as a function with its own gradient.

The forward is the usual one (per-sample, per-group mean and biased variance over every
position and the group's channels; PyTorch's GroupNorm). The backward is written out rather
than left to autodiff: one pass over [N, positions, C] reduces sum(dy) and sum(dy * (x - mean))
to [N, C], the parameter gradients and the per-group terms come from those small arrays, and
dx is one element-wise pass. Autodiff's version reduces the same large tensors several times
(XLA:CPU fused each reduction with its element-wise producer, re-computing it): on a CPU that
was 45% of the SD VAE's training step (benchmarks/RESULTS.md).

A custom VJP has no forward mode: jax.jvp / jacfwd through a network with GroupNorm raise
JAX's "can't apply forward-mode autodiff (jvp) to a custom_vjp function". A custom JVP rule
(whose transpose JAX derives) allows both but kept only half the gain, so it was not used.
"""

import functools
import math

import jax
import jax.numpy as jnp


def _grouped(x: jax.Array, groups: int) -> jax.Array:
  """[N, ..., C] -> [N, positions, groups, C // groups]."""
  return x.reshape(x.shape[0], math.prod(x.shape[1:-1]), groups, x.shape[-1] // groups)


def _forward(x, scale, bias, groups, epsilon):
  grouped = _grouped(x, groups)
  mean = grouped.mean(axis=(1, 3), keepdims=True)
  rstd = jax.lax.rsqrt(jnp.square(grouped - mean).mean(axis=(1, 3), keepdims=True) + epsilon)
  out = ((grouped - mean) * rstd).reshape(x.shape) * scale + bias
  return out, (x, mean, rstd, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int,
               epsilon: float) -> jax.Array:
  """x: [N, ..., C] (C divisible by `groups`); scale, bias: [C]; all one float dtype."""
  return _forward(x, scale, bias, groups, epsilon)[0]


def _backward(groups, epsilon, saved, dy):
  del epsilon  # In rstd already.
  x, mean, rstd, scale = saved
  centred = _grouped(x, groups) - mean
  dy = _grouped(dy, groups)
  sum_dy = dy.sum(axis=1, keepdims=True)  # [N, 1, G, C/G]
  sum_dy_normed = (dy * centred).sum(axis=1, keepdims=True) * rstd
  scale = scale.reshape(1, 1, groups, -1)
  count = dy.shape[1] * dy.shape[3]
  # d/dx of (x - mean) * rstd against g = dy * scale: rstd * (g - mean(g) - normed * mean(g *
  # normed)), the means over the group.
  mean_g = (scale * sum_dy).sum(axis=3, keepdims=True) / count
  mean_g_normed = (scale * sum_dy_normed).sum(axis=3, keepdims=True) / count
  dx = rstd * (scale * dy - mean_g - centred * rstd * mean_g_normed)
  return (dx.reshape(x.shape), sum_dy_normed.sum(axis=(0, 1)).reshape(-1),
          sum_dy.sum(axis=(0, 1)).reshape(-1))


group_norm.defvjp(_forward, _backward)
