"""optax optimisers from config: schedules, clipping, accumulation, frozen groups."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from ldm_jax.training import optim


def _params():
  return {"encoder": {"kernel": jnp.ones((2, 2))}, "decoder": {"kernel": jnp.ones((2,))}}


def test_warmup_then_cosine_schedule():
  block = common.optimizer_config(learning_rate=1.0, schedule="cosine", warmup_steps=10,
                                  end_learning_rate=0.1)
  lr = optim.learning_rate_schedule(block, num_steps=110)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(60), lr(110)],
                             [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)


def test_frozen_group_never_moves_and_clipping_applies():
  block = common.optimizer_config(name="adamw", learning_rate=0.1, frozen=("^encoder/",),
                                  grad_clip_norm=1.0)
  params = _params()
  opt = optim.create_optimizer(block, num_steps=10, params=params)
  state = opt.init(params)
  grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)
  updates, _ = opt.update(grads, state, params)
  assert float(jnp.abs(updates["encoder"]["kernel"]).max()) == 0.0
  assert float(jnp.abs(updates["decoder"]["kernel"]).max()) > 0.0
  with pytest.raises(ValueError, match=r"frozen=\['\^nothing'\] matches no parameter"):
    optim.create_optimizer(common.optimizer_config(frozen=("^nothing",)), num_steps=1,
                           params=params)


def test_accumulation_equals_one_big_batch():
  """Two accumulated steps of half-gradients == one step of their mean (plain Adam)."""
  params = _params()
  g1 = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p), params)
  g2 = jax.tree.map(lambda p: -0.1 * jnp.ones_like(p), params)
  accumulated = optim.create_optimizer(common.optimizer_config(accumulate_steps=2),
                                       num_steps=10)
  state = accumulated.init(params)
  p = params
  for g in (g1, g2):
    updates, state = accumulated.update(g, state, p)
    p = optax.apply_updates(p, updates)
  single = optim.create_optimizer(common.optimizer_config(), num_steps=10)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  updates, _ = single.update(mean, single.init(params), params)
  expected = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match="optimizer.name='sgdd'"):
    optim.create_optimizer(common.optimizer_config(name="sgdd"), num_steps=1)
  with pytest.raises(ValueError, match="optimizer.schedule='linear'"):
    optim.create_optimizer(common.optimizer_config(schedule="linear"), num_steps=1)
  with pytest.raises(ValueError, match="accumulate_steps=0"):
    optim.create_optimizer(common.optimizer_config(accumulate_steps=0), num_steps=1)


def _frozen_updates(config, part, patterns):
  """(paths, zero update?) for one optimiser step of the stage's real parameter tree with
  `patterns` frozen; gradients of ones everywhere."""
  from ldm_jax.training import stages  # pylint: disable=import-outside-toplevel
  block = config.optimizer
  block.update(frozen=patterns, warmup_steps=0)  # Warm-up would make step 0 a no-op.
  stage = stages.create(config)
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
      stage.init_state, jax.random.key(0)).params[part])
  opt = stage.optimizers[part]
  updates, _ = jax.jit(opt.update)(jax.tree.map(jnp.ones_like, params), opt.init(params),
                                   params)
  return {optim.parameter_path(path): bool(jnp.all(u == 0))
          for path, u in jax.tree_util.tree_leaves_with_path(updates)}


@pytest.mark.parametrize("name,part,patterns,expected", [
    # A UNet (module names hold '/': 'down_blocks_0/resnets_0') inside an LDM tree with a
    # text encoder.
    ("digits_ldm:tiny,cond=caption", "model",
     ("^network/time_embedding/", "^network/down_blocks_0/resnets_0/", "^conditioner/"),
     ("network/time_embedding/", "network/down_blocks_0/resnets_0/", "conditioner/")),
    # The autoencoder's encoder half, generator side.
    ("digits_autoencoder:tiny", "generator", ("^autoencoder/encoder/",),
     ("autoencoder/encoder/",)),
])
def test_frozen_groups_on_real_parameter_trees(name, part, patterns, expected):
  import importlib  # pylint: disable=import-outside-toplevel
  module, _, arg = name.partition(":")
  config = importlib.import_module(f"configs.{module}").get_config(arg)
  zero = _frozen_updates(config, part, patterns)
  frozen = {p for p, z in zero.items() if p.startswith(expected)}
  assert frozen
  assert all(zero[p] for p in frozen), [p for p in frozen if not zero[p]]
  moved = set(zero) - frozen
  assert moved and not any(zero[p] for p in moved), [p for p in moved if zero[p]]
