"""Two real JAX processes (CPU, gloo) share one global batch: the multi-host code path."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests import subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_read_disjoint_halves_of_one_global_batch(tmp_path):
  port, data_dir = str(_free_port()), str(tmp_path / "tfds")
  env = subprocesses.environment()
  workers = [subprocess.Popen(
      [sys.executable, "-m", "tests.data._multiprocess_worker", str(i), port, data_dir,
       str(tmp_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  logs = [w.communicate(timeout=240)[0] for w in workers]
  for worker, log in zip(workers, logs):
    assert worker.returncode == 0, log[-3000:]
  reports = [json.loads((tmp_path / f"report_{i}.json").read_text()) for i in range(2)]
  for report in reports:
    assert report["global_shape"] == [16, 8, 8, 1]
    assert report["local_devices"] == 4
    assert report["shard_shapes"] == [[2, 8, 8, 1]]
    assert report["resume_equal"]
  # Each process fed 8 of the 16 examples, from its own half of the split.
  ids = [set(r["ids"]) for r in reports]
  assert len(ids[0]) == len(ids[1]) == 8 and not ids[0] & ids[1]
  index = lambda i: int(i.rsplit("__", 1)[1])
  assert max(map(index, ids[0])) < min(map(index, ids[1]))
  # The global array is the two processes' local data together.
  total = reports[0]["local_sum"] + reports[1]["local_sum"]
  assert reports[0]["global_sum"] == pytest.approx(total, rel=1e-6)
  assert reports[0]["label_sum"] == reports[0]["local_label_sum"] + reports[1][
      "local_label_sum"]
