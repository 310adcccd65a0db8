"""The training state, one pytree for every stage, and the non-finite update guard."""

import zlib
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly.

  params / opt_state are dicts keyed by the trained part ('autoencoder', 'discriminator',
  'unet', ...); model_state holds non-trained collections (BatchNorm statistics);
  ema_params mirrors params for the parts that keep an average (or is None). `rng` is raw
  key data (uint32), so checkpoints store it like any array; `skipped` counts updates
  dropped by the non-finite guard.
  """
  step: jax.Array
  params: dict[str, Any]
  opt_state: dict[str, Any]
  model_state: dict[str, Any]
  ema_params: dict[str, Any] | None
  rng: jax.Array
  skipped: jax.Array

  @classmethod
  def create(cls, *, params, optimizers: dict[str, optax.GradientTransformation],
             rng: jax.Array, model_state=None, ema: bool = False) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state={k: opt.init(params[k]) for k, opt in optimizers.items()},
               model_state=model_state or {},
               ema_params=jax.tree.map(jnp.copy, params) if ema else None,
               rng=jax.random.key_data(rng), skipped=jnp.zeros((), jnp.int32))

  def step_key(self, name: str) -> jax.Array:
    """A key for this step and purpose: fold_in(root, step), then a CRC of the name."""
    key = jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)
    return jax.random.fold_in(key, zlib.crc32(name.encode()) % (2**31))


def all_finite(*trees) -> jax.Array:
  leaves = [x for tree in trees for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def keep_if(finite: jax.Array, new: TrainState, old: TrainState) -> TrainState:
  """`new` when `finite`, else `old` with its step advanced and `skipped` counted.

  Either way the step counter moves on, so data and randomness move on too.
  """
  # One lax.cond over the whole state, not a where per leaf: XLA's CPU compile time grew
  # from ~25 s to ~110 s for a small UNet with ~1,200 per-leaf selects.
  kept = jax.lax.cond(finite, lambda n, o: n, lambda n, o: o, new, old)
  return kept.replace(step=old.step + 1, skipped=old.skipped + (1 - finite.astype(jnp.int32)))


def update_ema(ema_params, params, decay):
  """ema + (1 - decay) (params - ema), in float32.

  Not optax.incremental_update: its decay * ema + (1 - decay) * params rounds, so the
  average of a parameter that does not move (a frozen group) would drift; this form leaves
  it bit-identical.
  """
  return jax.tree.map(lambda e, p: e + (1.0 - decay) * (p.astype(jnp.float32) - e),
                      ema_params, params)
