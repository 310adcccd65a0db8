"""Classifier-free guidance as a wrapper around a conditional model function.

`cfg_model_fn(model_fn, scale)` returns `fn(x, t, cond, uncond)` that evaluates the model
once on the batch [x; x] with [cond; uncond] and returns uncond + scale (cond - uncond),
optionally with Lin et al.'s guidance rescale (std matching, `rescale` = phi).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp


def rescale_guidance(guided, conditional, rescale: float):
  """Mixes `guided` with a copy whose per-example std matches the conditional output."""
  axes = tuple(range(1, guided.ndim))
  matched = guided * (jnp.std(conditional, axis=axes, keepdims=True) /
                      jnp.std(guided, axis=axes, keepdims=True))
  return rescale * matched + (1.0 - rescale) * guided


def cfg_model_fn(model_fn: Callable[[Any, Any, Any], Any], scale: float,
                 rescale: float = 0.0):
  """model_fn(x, t, condition) -> guided fn(x, t, cond, uncond), one batched call.

  `cond` / `uncond` are pytrees (context arrays, labels, ...) with batch-leading leaves.
  scale = 1 is the conditional model alone (evaluated without the doubled batch).
  """
  def guided(x, t, cond, uncond):
    if scale == 1.0:
      return model_fn(x, t, cond)
    both = jax.tree_util.tree_map(lambda c, u: jnp.concatenate([c, u]), cond, uncond)
    out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
    conditional, unconditional = jnp.split(out, 2)
    result = unconditional + scale * (conditional - unconditional)
    if rescale:
      result = rescale_guidance(result, conditional, rescale)
    return result
  return guided
