"""config.evals: a tiny LDM run logs FID (and precision/recall) of its EMA samples against its
data's cached statistics to TensorBoard; an autoencoder's rFID; the blocks' checks."""

import glob
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import digits_autoencoder
from configs import digits_ldm
from ldm_jax.eval import references
from ldm_jax.training import autoencoder_stage
from ldm_jax.training import evals
from ldm_jax.training import loop
from tests.metrics import conftest as metrics_fixtures

inception_weights = metrics_fixtures.inception_weights  # The shared fixture.


def _block(weights, cache_dir, /, **overrides):
  block = dict(type="fid", every=1, num_samples=8, weights=weights, metrics=("fid", "prc"),
               fid_method="eigvals", split="test[:16]", batch_size=16, cache_dir=cache_dir)
  return ml_collections.ConfigDict({**block, **overrides})


def _scalars(workdir: str) -> dict:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  found = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        array = tf.make_ndarray(value.tensor)
        if array.ndim == 0 and array.dtype.kind == "f":  # Scalars, not images or text.
          found[(value.tag, event.step)] = float(array)
  return found


@pytest.mark.slow
def test_tiny_ldm_run_logs_fid_to_tensorboard(data_dir, inception_weights, tmp_path):
  config = digits_ldm.get_config("tiny")
  config.data.data_dir = data_dir
  config.num_steps = 1
  cache = str(tmp_path / "cache")
  config.evals = ml_collections.ConfigDict({"fid": _block(inception_weights[1], cache)})
  workdir = str(tmp_path / "run")
  _, metrics = loop.train_and_evaluate(config, workdir)
  scalars = _scalars(workdir)
  print({k: v for k, v in scalars.items() if k[0].startswith("fid/")})
  assert scalars[("fid/fid", 1)] == pytest.approx(metrics["fid/fid"], rel=1e-6)
  assert np.isfinite(metrics["fid/fid"]) and metrics["fid/fid"] > 0
  assert 0 <= scalars[("fid/precision", 1)] <= 1 and 0 <= scalars[("fid/recall", 1)] <= 1
  (entry,) = os.listdir(cache)  # The split's statistics, cached under its key.
  assert entry.startswith("digits-test_16_-16px-tf1-")
  assert references.load(os.path.join(cache, entry)).count == 16


def test_autoencoder_rfid_of_reconstructions(data_dir, inception_weights, tmp_path):
  """rFID of a (freshly initialised) autoencoder's reconstructions of the first images of
  the eval split, through the evaluator the loop calls."""
  config = digits_autoencoder.get_config("tiny")
  config.data.data_dir = data_dir
  config.evals = ml_collections.ConfigDict({"rfid": _block(
      inception_weights[1], str(tmp_path / "cache"), type="rfid", split="test",
      metrics=("fid",), every=2)})
  sliced = config.copy_and_resolve_references()
  sliced.evals.rfid.split = "test[:8]"
  with pytest.raises(ValueError, match=r"evals.rfid: type 'rfid' takes the first num_samples "
                     r"images of a whole split; split='test\[:8\]' is a slice"):
    evals.create(sliced)
  stage = autoencoder_stage.AutoencoderStage(config)
  state = jax.jit(stage.init_state)(jax.random.key(0))
  (evaluator,) = evals.create(config)
  assert config.num_steps != 3 and evals.run([evaluator], stage, state, config, step=3) == {}
  results = evals.run([evaluator], stage, state, config, step=int(config.num_steps))
  assert set(results) == {"rfid/fid"} and results["rfid/fid"] > 0
  assert evaluator.reference.count == 8  # The first num_samples images of the split.


def test_eval_blocks_are_checked_before_training(inception_weights):
  config = digits_ldm.get_config("tiny")
  weights = inception_weights[1]
  cases = [
      (dict(type="rfid"), "type='rfid' measures the autoencoder stage; this run trains the "
                          "ldm stage"),
      (dict(fid_method="sqrtm"), "fid_method='sqrtm' on 8 samples"),
      (dict(metrics=("fid", "fjd")), r"metrics=\('fid', 'fjd'\): expected some of"),
      (dict(sampling=dict(steps=2, cfg=3)), r"sampling: unknown keys \['cfg'\]"),
      (dict(metrics=("kid",)), "kid with kid_subset_size=1000 needs as many samples"),
      (dict(weights="/nowhere/inception.npz"), "No Inception weights file /nowhere"),
  ]
  for overrides, message in cases:
    config.evals = ml_collections.ConfigDict({"fid": _block(weights, "", **overrides)})
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      evals.create(config)
  config.evals = ml_collections.ConfigDict({"fid": dict(type="fid", every=10)})
  with pytest.raises(ValueError, match=r"evals.fid.num_samples is required"):
    evals.create(config)


def test_importing_the_evaluators_defines_no_command_line_flags():
  """The FID command's flags (required ones among them) are not forced on train.py."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  assert evals.fid_lib.__name__ == "ldm_jax.eval.fid"
  assert not {"samples", "reference", "save_stats", "cache_dir"} & set(flags.FLAGS)
