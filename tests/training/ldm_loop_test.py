"""The LDM stage on the engine: an 8-device sharded step equals one device, and a resumed
run equals a straight one bit for bit (EMA and optimiser state included)."""

import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from configs import digits_ldm
from ldm_jax.parallel import sharding
from ldm_jax.training import loop
from ldm_jax.training import optim
from ldm_jax.training import stages


def _run(stage, mesh, batches, min_size):
  abstract = jax.eval_shape(stage.init_state, jax.random.key(0))
  shardings = sharding.tree_shardings(abstract, mesh, min_size=min_size)
  state = jax.jit(stage.init_state, out_shardings=shardings)(jax.random.key(0))
  consts = jax.device_put(stage.constants, sharding.replicated(mesh))
  step = jax.jit(stage.train_step, in_shardings=(shardings, sharding.batch_sharding(mesh),
                                                 sharding.replicated(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  for batch in batches:
    state, metrics = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)), consts)
  return state, metrics


@pytest.mark.slow
def test_sharded_ldm_step_equals_one_device():
  assert jax.device_count() == 8
  config = digits_ldm.get_config("tiny")
  # eps = 1: the update is proportional to the gradient, so the comparison sees the step
  # itself rather than Adam's sign of rounding noise (see sharded_step_test.py).
  config.optimizer.eps = 1.0
  stage = stages.create(config)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.uniform(-1, 1, (8, 16, 16, 1)).astype(np.float32),
              "label": rng.integers(0, 10, 8).astype(np.int32)} for _ in range(2)]
  mesh = sharding.create_mesh(ml_collections.ConfigDict({"data": 4, "fsdp": 2}))
  sharded, m_sharded = _run(stage, mesh, batches, min_size=1)
  single, m_single = _run(stage, sharding.create_mesh(
      ml_collections.ConfigDict({"data": 1, "fsdp": 1}), jax.devices()[:1]), batches,
                          min_size=1)
  largest = diff = 0.0
  for tree in ("params", "ema_params"):
    for a, b in zip(jax.tree.leaves(jax.device_get(getattr(sharded, tree))),
                    jax.tree.leaves(jax.device_get(getattr(single, tree)))):
      a, b = np.asarray(a), np.asarray(b)
      largest = max(largest, float(np.abs(b).max()))
      diff = max(diff, float(np.abs(a - b).max()))
  print(f"LDM sharded (4x2) vs 1 device after 2 steps: max |difference| / max |parameter| = "
        f"{diff / largest:.2e}")
  assert diff / largest <= 1e-5
  np.testing.assert_allclose(float(m_sharded["loss"]), float(m_single["loss"]), rtol=1e-5)


@pytest.mark.slow
def test_ldm_resume_equals_straight_run_bitwise(tiny_run, data_dir, tmp_path):
  """Step 1 of the shared tiny run, resumed to step 3, equals 3 straight steps."""
  config = digits_ldm.get_config("tiny")
  config.data.data_dir = data_dir
  config.num_steps = 3
  shutil.copytree(os.path.join(tiny_run("digits_ldm:tiny"), "checkpoints", "1"),
                  tmp_path / "resumed" / "checkpoints" / "1")
  resumed, _ = loop.train_and_evaluate(config, str(tmp_path / "resumed"))
  straight, _ = loop.train_and_evaluate(config, str(tmp_path / "straight"))
  assert int(resumed.step) == 3
  for tree in ("params", "ema_params", "opt_state", "rng"):
    for a, b in zip(jax.tree.leaves(jax.device_get(getattr(straight, tree))),
                    jax.tree.leaves(jax.device_get(getattr(resumed, tree)))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_ldm_run_keeps_a_frozen_group_bit_identical(data_dir, tmp_path):
  config = digits_ldm.get_config("tiny")
  config.data.data_dir = data_dir
  config.num_steps = 3
  frozen = ("network/time_embedding/", "network/down_blocks_0/resnets_0/")
  config.optimizer.frozen = tuple(f"^{p}" for p in frozen)
  # Without warm-up (a zero rate at step 0) every other parameter moves within 3 steps.
  config.optimizer.warmup_steps = 0
  state, _ = loop.train_and_evaluate(config, str(tmp_path))
  stage, key = stages.create(config), jax.random.key(config.seed)
  # The loop's shardings: its own initialisation program, compiled once (cached).
  shardings = sharding.tree_shardings(jax.eval_shape(stage.init_state, key),
                                      sharding.create_mesh(config.mesh))
  initial = jax.jit(stage.init_state, out_shardings=shardings)(key)
  for tree in ("params", "ema_params"):
    kept, still = 0, []
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(jax.device_get(getattr(state, tree))),
        jax.tree.leaves(jax.device_get(getattr(initial, tree)))):
      name = optim.parameter_path(path)
      if name.startswith(tuple(f"model/{p}" for p in frozen)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
        kept += 1
      elif np.array_equal(a, b):
        still.append(name)
    assert kept >= 10 and not still, (tree, kept, still)


@pytest.mark.slow
def test_first_stage_from_an_autoencoder_run_and_from_converted_weights(data_dir, tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  from configs import digits_autoencoder  # pylint: disable=import-outside-toplevel
  from ldm_jax.convert import export  # pylint: disable=import-outside-toplevel
  from ldm_jax.ldm import first_stage  # pylint: disable=import-outside-toplevel
  ae_config = digits_autoencoder.get_config("tiny")
  ae_config.data.data_dir = data_dir
  ae_config.update(num_steps=1, eval_every=100)
  ae_state, _ = loop.train_and_evaluate(ae_config, str(tmp_path / "ae"))
  final = json.loads((tmp_path / "ae" / "autoencoder_final.json").read_text())

  config = digits_ldm.get_config("tiny")
  config.autoencoder = None  # Taken from the run's saved config.
  config.first_stage.update(source="workdir", path=str(tmp_path / "ae"))
  config.network.in_channels = config.network.out_channels = ae_config.autoencoder.embed_dim
  stage = stages.create(config)
  assert stage.first_stage.scale_factor == pytest.approx(final["scale_factor"])
  assert stage.first_stage.downsample == 2 and stage.first_stage.kind == "kl"
  for a, b in zip(jax.tree.leaves(stage.constants["first_stage"]),
                  jax.tree.leaves(jax.device_get(ae_state.params["generator"]["autoencoder"]))):
    np.testing.assert_array_equal(a, np.asarray(b))
  # A different architecture in config.autoencoder is named, not silently replaced.
  wrong = digits_ldm.get_config("tiny")
  wrong.first_stage.update(source="workdir", path=str(tmp_path / "ae"))
  with pytest.raises(ValueError, match=r"config.autoencoder differs .* at embed_dim"):
    stages.create(wrong)

  # Converted weights (python -m ldm_jax.convert's layout) need an explicit scale factor.
  export.write(str(tmp_path / "export"), {"autoencoder": stage.constants["first_stage"]},
               ml_collections.ConfigDict({"autoencoder": ae_config.autoencoder.to_dict()}))
  config.first_stage.update(source="export", path=str(tmp_path / "export"))
  with pytest.raises(ValueError, match="first_stage.scale_factor is not set"):
    stages.create(config)
  config.first_stage.scale_factor = 0.5
  fs, params = first_stage.load(config)
  assert fs.scale_factor == 0.5
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(stage.constants["first_stage"])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_ldm_resume_refuses_a_config_that_changes_the_state(tiny_run, data_dir, tmp_path):
  config = digits_ldm.get_config("tiny")
  config.data.data_dir = data_dir
  shutil.copytree(os.path.join(tiny_run("digits_ldm:tiny"), "checkpoints", "1"),
                  tmp_path / "checkpoints" / "1")
  config.num_steps = 2
  config.diffusion.learn_logvar = True  # Adds a parameter: the saved state cannot fit.
  with pytest.raises(ValueError, match="another model: diffusion.learn_logvar differ"):
    loop.train_and_evaluate(config, str(tmp_path))
  config.diffusion.learn_logvar = False
  config.ema.decay = 0.0  # No EMA: the saved EMA parameters would not fit either.
  with pytest.raises(ValueError, match="another model: ema.decay differ"):
    loop.train_and_evaluate(config, str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints") == ["1"]  # Nothing renamed or lost.
