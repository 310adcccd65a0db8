"""Fixtures of the training tests."""

import os

import numpy as np
import pytest

from tests.training import runs


@pytest.fixture(scope="session")
def straight_autoencoder_run(data_dir, shared):
  """(workdir, final state's leaves) of `runs.autoencoder_config` trained without a stop
  (once per test session)."""
  from ldm_jax.training import loop  # pylint: disable=import-outside-toplevel

  def make(path):
    state, _ = loop.train_and_evaluate(runs.autoencoder_config(data_dir),
                                       os.path.join(path, "run"))
    np.savez(os.path.join(path, "final.npz"), *runs.state_leaves(state))

  path = shared("straight_autoencoder_run", make)
  with np.load(os.path.join(path, "final.npz")) as final:
    return os.path.join(path, "run"), [final[f"arr_{i}"] for i in range(len(final.files))]
