"""A (data=4, fsdp=2) sharded train step equals the same step on one device."""

import jax
import numpy as np
import pytest

from configs import autoencoder_kl_f4
from ldm_jax.parallel import sharding
from ldm_jax.training import stages


def _run(stage, mesh, batches, min_size):
  abstract = jax.eval_shape(stage.init_state, jax.random.key(0))
  shardings = sharding.tree_shardings(abstract, mesh, min_size=min_size)
  state = jax.jit(stage.init_state, out_shardings=shardings)(jax.random.key(0))
  step = jax.jit(stage.train_step, in_shardings=(shardings, sharding.batch_sharding(mesh),
                                                 sharding.replicated(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  for batch in batches:
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    state, metrics = step(state, batch, {})
  return state, metrics


@pytest.mark.slow
def test_sharded_step_equals_one_device():
  assert jax.device_count() == 8
  config = autoencoder_kl_f4.get_config("tiny")
  config.loss.disc_start = 1  # Step 0 without, step 1 with the adversarial terms.
  # Adam's first steps are +-lr wherever |grad| >> eps, also where the gradient is rounding
  # noise (a conv bias in a GroupNorm group's mean direction has zero true gradient), so two
  # correct reductions in different orders can move such a parameter in opposite directions.
  # eps = 1 makes the update proportional to the gradient: the step itself is compared.
  config.optimizer.eps = config.disc_optimizer.eps = 1.0
  stage = stages.create(config)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)}
             for _ in range(2)]
  mesh = sharding.create_mesh(_mesh(4, 2))
  # min_size=1: every parameter with a dimension divisible by 2 is really split over fsdp.
  sharded, m_sharded = _run(stage, mesh, batches, min_size=1)
  kernel = sharded.params["generator"]["autoencoder"]["decoder"]["conv_out"]["kernel"]
  assert "fsdp" in str(kernel.sharding.spec)
  single, m_single = _run(stage, sharding.create_mesh(_mesh(1, 1), jax.devices()[:1]),
                          batches, min_size=1)
  worst, where, largest, diff = 0.0, None, 0.0, 0.0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(sharded.params)),
                          jax.tree.leaves(jax.device_get(single.params))):
    a, b = np.asarray(a), np.asarray(b)
    largest, diff = max(largest, float(np.abs(b).max())), max(diff, float(np.abs(a - b).max()))
    # Per leaf: leaves that start at zero and have (almost) no true gradient hold rounding
    # noise after two steps (to_k's bias: softmax ignores a per-query constant; ~4e-9 for a
    # conv bias feeding a GroupNorm), so a leaf's scale is at least one update, the lr.
    error = float(np.abs(a - b).max()) / max(float(np.abs(b).max()),
                                             config.optimizer.learning_rate)
    if error > worst:
      worst, where = error, jax.tree_util.keystr(path)
  print(f"sharded (4x2) vs 1 device after 2 steps: max |difference| / max |parameter| = "
        f"{diff / largest:.2e}; worst leaf {worst:.2e} ({where}); d_weight "
        f"{float(m_sharded['d_weight']):.6f} vs {float(m_single['d_weight']):.6f}")
  assert diff / largest <= 1e-5
  assert worst <= 1e-4
  for key in ("loss", "d_weight", "d_loss"):
    np.testing.assert_allclose(float(m_sharded[key]), float(m_single[key]), rtol=1e-5)


def _mesh(data, fsdp):
  import ml_collections  # pylint: disable=import-outside-toplevel
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp})
