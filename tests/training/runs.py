"""The tiny digits autoencoder run that the loop, resume and preemption tests share: its
config (train.py flags for subprocesses) and bitwise state comparison."""

import jax
import numpy as np

from configs import digits_autoencoder

# 6 steps, a checkpoint and an evaluation every 2, the adversarial terms from step 2.
STEPS, CHECKPOINT_EVERY, EVAL_EVERY, DISC_START = 6, 2, 2, 2
TREES = ("params", "opt_state", "model_state", "ema_params", "rng", "skipped")


def autoencoder_config(data_dir, **overrides):
  """The shared run's config; `overrides` may name nested fields ('loss.logvar_init')."""
  config = digits_autoencoder.get_config("tiny")
  config.data.data_dir = data_dir
  config.update(num_steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, eval_every=EVAL_EVERY)
  config.loss.disc_start = DISC_START
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    block = config
    for parent in parents:
      block = block[parent]
    block[leaf] = value
  return config


def train_flags(workdir: str, data_dir: str) -> list[str]:
  """train.py's flags for the same run."""
  return ["--config=configs/digits_autoencoder.py:tiny", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.num_steps={STEPS}",
          f"--config.checkpoint_every={CHECKPOINT_EVERY}", f"--config.eval_every={EVAL_EVERY}",
          f"--config.loss.disc_start={DISC_START}"]


def state_leaves(state) -> list[np.ndarray]:
  return [np.asarray(x) for tree in TREES for x in jax.tree.leaves(
      jax.device_get(getattr(state, tree)))]


def assert_same_state(leaves, state) -> None:
  ours = state_leaves(state)
  assert len(ours) == len(leaves)
  for i, (a, b) in enumerate(zip(leaves, ours)):
    np.testing.assert_array_equal(a, b, err_msg=f"leaf {i}")
