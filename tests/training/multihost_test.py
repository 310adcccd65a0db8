"""Two real JAX processes (CPU, gloo) train together and match one process on 4 devices."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import subprocesses
from tests.training import _multihost_worker

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(args, env, **kw):
  return subprocess.Popen([sys.executable, "-m", "tests.training._multihost_worker", *args],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
@pytest.mark.xdist_group("processes")  # See tests/conftest.py.
def test_two_process_training_matches_one_process(data_dir, tmp_path):
  env = subprocesses.environment()
  port, workdir = str(_free_port()), str(tmp_path / "run")
  workers = [_run(["train", str(i), port, data_dir, workdir], env) for i in range(2)]
  try:
    # Meanwhile, here: one process, 4 of its devices, the same global batches.
    ref = _multihost_worker.reference(data_dir, jax.devices()[:4])
  finally:
    logs = [w.communicate(timeout=900)[0] for w in workers]
  for worker, log in zip(workers, logs):
    assert worker.returncode == 0, log[-4000:]
  # One checkpoint, with each process's input position saved beside the shared state.
  step_dir = os.path.join(workdir, "checkpoints", str(_multihost_worker.STEPS))
  assert sorted(f for f in os.listdir(os.path.join(step_dir, "data"))
                if f.endswith(".json")) == ["process_0_of_2.json", "process_1_of_2.json"]
  ours = np.load(os.path.join(workdir, "params.npz"))
  assert sorted(ours.files) == sorted(ref)
  largest = max(float(np.abs(ref[k]).max()) for k in ref)
  diff = max(float(np.abs(ours[k] - ref[k]).max()) for k in ref)
  print(f"2 processes x 2 devices vs 1 process x 4 devices, {_multihost_worker.STEPS} steps: "
        f"max |difference| / max |parameter| = {diff / largest:.2e}")
  assert diff / largest <= 1e-5
