"""The training engine end to end on tiny autoencoder configs (8 CPU devices)."""

import importlib
import itertools
import os
import shutil
import time

import jax
import jax.numpy as jnp
from jax.experimental import io_callback
import numpy as np
import pytest

from ldm_jax.data import pipeline
from ldm_jax.training import checkpoint
from ldm_jax.training import loop
from ldm_jax.training import stages
from tests.training import runs


def _config(name, data_dir, **overrides):
  config = importlib.import_module(f"configs.{name}").get_config("tiny")
  config.data.data_dir = data_dir
  config.checkpoint.async_save = True
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def _params(state):
  return jax.tree.map(np.asarray, jax.device_get(state.params))


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["autoencoder_kl_f4", "vq_f4"])
def test_train_and_evaluate_runs_all_terms(name, data_dir, tmp_path):
  """Two steps with the adversarial terms on from step 1, eval, checkpoint, scale factor."""
  config = _config(name, data_dir, num_steps=2, **{"loss.disc_start": 1})
  state, metrics = loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2 and int(state.skipped) == 0
  assert {"eval/psnr", "eval/ssim", "eval/l1"} <= set(metrics)
  assert all(np.isfinite(v) for v in metrics.values())
  final = (tmp_path / "autoencoder_final.json").read_text()
  assert "scale_factor" in final
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    straight_autoencoder_run, data_dir, tmp_path):
  """(Resuming from step 2 ends bit-identical to the straight run; the preemption tests
  resume from every other window.)"""
  straight, final = straight_autoencoder_run
  for step in ("2", "4"):  # The straight run's first two checkpoints.
    shutil.copytree(os.path.join(straight, "checkpoints", step),
                    tmp_path / "run" / "checkpoints" / step)
  config = runs.autoencoder_config(data_dir)
  state_dir = tmp_path / "run" / "checkpoints" / "4" / "state"
  for root, _, files in os.walk(state_dir):
    for f in files:
      with open(os.path.join(root, f), "wb") as handle:
        handle.write(b"garbage")
  with _log_capture() as log:
    resumed, _ = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert "Checkpoint step 4" in log.text and "cannot be restored" in log.text
  assert "trying step 2" in log.text
  # The unreadable step is kept aside, never deleted.
  assert (tmp_path / "run" / "checkpoints" / "4.unreadable").is_dir()
  runs.assert_same_state(final, resumed)
  # Another model in the same workdir is refused by name; nothing is renamed.
  z_channels, config.autoencoder.z_channels = config.autoencoder.z_channels, 4
  with pytest.raises(ValueError, match="holds a run of another model: autoencoder differ"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  # So is an optimiser whose state has another structure (clipping wraps Adam's state).
  config.autoencoder.z_channels = z_channels
  config.optimizer.grad_clip_norm = 1.0
  config.disc_optimizer.frozen = ("^main_0/",)
  with pytest.raises(ValueError, match="another model: disc_optimizer.frozen, "
                     "optimizer.grad_clip_norm differ"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "4", "4.unreadable",
                                                                  "6"]


class _log_capture:
  def __enter__(self):
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    import logging  # pylint: disable=import-outside-toplevel
    self.records = []
    outer = self

    class Handler(logging.Handler):
      def emit(self, record):
        outer.records.append(record.getMessage())

    self.handler = Handler()
    absl_logging.get_absl_logger().addHandler(self.handler)
    return self

  def __exit__(self, *exc):
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    absl_logging.get_absl_logger().removeHandler(self.handler)

  @property
  def text(self):
    return "\n".join(self.records)


@pytest.mark.slow
def test_nonfinite_guard_skip_and_stop(data_dir, tmp_path):
  # A NaN log-variance makes every loss and gradient NaN from the first step.
  config = runs.autoencoder_config(data_dir, num_steps=3, **{"loss.logvar_init": float("nan")})
  state, _ = loop.train_and_evaluate(config, str(tmp_path / "skip"))
  assert int(state.step) == 3 and int(state.skipped) == 3
  initial = jax.jit(stages.create(config).init_state)(jax.random.key(config.seed))
  _assert_trees_equal(_params(initial)["generator"]["autoencoder"],
                      _params(state)["generator"]["autoencoder"])
  config.nonfinite = "stop"
  with pytest.raises(loop.NonFiniteError,
                     match=r"Step 1: non-finite .*\(seen at step \d\).*last good"):
    loop.train_and_evaluate(config, str(tmp_path / "stop"))
  assert not os.listdir(tmp_path / "stop" / "checkpoints")


@pytest.mark.slow
def test_host_runs_steps_ahead_of_the_device(straight_autoencoder_run, data_dir, tmp_path,
                                             monkeypatch):
  """While the device runs step i, the loop has read (and dispatched) the batches of steps
  up to i + steps_ahead and no further, and the result is the straight run's bit for bit.

  Each step's batch passes through a host callback on the device that holds the step until
  the host has read i + steps_ahead batches (or 60 s: a loop that waited for every step
  would never get there) and 0.2 s more, then records how many it had read."""
  ahead, sync_free = 3, 1000  # Not the default (2); no logging, evaluation or checkpoint.
  config = runs.autoencoder_config(data_dir, steps_ahead=ahead, log_every=sync_free,
                                   eval_every=sync_free, checkpoint_every=sync_free)
  iterators, seen = [], {}
  create_iterator = pipeline.create_iterator

  def recording_iterator(*args, train=True, **kwargs):
    iterator = create_iterator(*args, train=train, **kwargs)
    if train:
      iterators.append(iterator)
    return iterator

  def hold(i):
    i, deadline = int(i), time.monotonic() + 60
    target = min(i + ahead, runs.STEPS)
    while iterators[0].batches_yielded < target and time.monotonic() < deadline:
      time.sleep(0.005)
    time.sleep(0.2)  # Time for a host not held back to read further.
    seen[i] = iterators[0].batches_yielded
    return np.int32(0)

  compile_step = loop._compile_train_step  # pylint: disable=protected-access

  def held_step(train_step, state, batch, consts):
    compiled = compile_step(train_step, state, batch, consts)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def gate(batch, i):
      token = io_callback(hold, jax.ShapeDtypeStruct((), jnp.int32), i, sharding=device)
      return jax.lax.optimization_barrier((batch, token))[0]

    gate = jax.jit(gate, out_shardings=jax.tree.map(lambda x: x.sharding, batch))
    count = itertools.count(1)
    return lambda state, batch, consts: compiled(state, gate(batch, next(count)), consts)

  monkeypatch.setattr(pipeline, "create_iterator", recording_iterator)
  monkeypatch.setattr(loop, "_compile_train_step", held_step)
  state, _ = loop.train_and_evaluate(config, str(tmp_path))
  assert seen == {i: min(i + ahead, runs.STEPS) for i in range(1, runs.STEPS + 1)}
  runs.assert_same_state(straight_autoencoder_run[1], state)


def test_config_errors(data_dir, tmp_path):
  config = _config("autoencoder_kl_f4", data_dir)
  config.nonfinite = "ignore"
  with pytest.raises(ValueError, match="nonfinite='ignore'"):
    loop.train_and_evaluate(config, str(tmp_path))
  config = _config("autoencoder_kl_f4", data_dir, steps_ahead=-1)
  with pytest.raises(ValueError, match="steps_ahead=-1: expected how many steps"):
    loop.train_and_evaluate(config, str(tmp_path))
  config = _config("autoencoder_kl_f4", data_dir, **{"loss.perceptual_weight": 1.0})
  with pytest.raises(ValueError, match="needs LPIPS weights.*lpips_convert"):
    loop.train_and_evaluate(config, str(tmp_path))


def test_evaluate_averages_over_the_real_examples_of_the_whole_split(data_dir):
  """clu Averages merged over every eval batch: the padding of the last batch counts for
  nothing (the digits eval split is not a multiple of the batch size)."""
  from clu import metrics as clu_metrics  # pylint: disable=import-outside-toplevel
  from ldm_jax.parallel import sharding  # pylint: disable=import-outside-toplevel
  config = _config("digits_autoencoder", data_dir, eval_batches=None,
                   **{"data.batch_size": 48})

  class Brightness:
    def prepare(self, batch, mesh, extra):
      del mesh
      return {k: batch[k] for k in ("image",) + tuple(extra)}

  def eval_step(state, batch):
    del state
    return {"brightness": clu_metrics.Average.from_model_output(
        batch["image"].mean(axis=(1, 2, 3)), mask=batch["mask"] > 0)}

  mesh = sharding.create_mesh(config.mesh)
  results = loop.evaluate(Brightness(), None, config, mesh, jax.jit(eval_step))
  values, padded = [], 0
  for batch in pipeline.create_iterator(config.data, seed=config.seed, mesh=mesh,
                                        train=False):
    keep = np.asarray(batch["mask"]) > 0
    values.append(np.asarray(batch["image"]).mean(axis=(1, 2, 3))[keep])
    padded += int((~keep).sum())
  assert padded > 0, len(values)
  values = np.concatenate(values)
  np.testing.assert_allclose(results["eval/brightness"], values.astype(np.float64).mean(),
                             rtol=1e-5)
