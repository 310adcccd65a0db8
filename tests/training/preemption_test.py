"""SIGTERM in each window of a run (imports, restore, compile, a step, an asynchronous save
hit twice, an evaluation, the final statistics): train.py exits 0, the workdir holds the step
reached (or the last good checkpoint), and rerunning it ends bit-identical to a run never
interrupted."""

import os
import shutil
import subprocess
import sys

import pytest

from ldm_jax.training import loop
from tests.training import runs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Window -> the checkpoint steps the interrupted run leaves (checkpoints every 2 steps).
WINDOWS = {
    "imports": [],  # Before the first step, a new workdir: nothing to save.
    "restore": [2],  # A resumed run stopped while reading step 2: step 2 kept as it was.
    "compile": [],  # Stopped once compiled, before the first step.
    "step": [2, 3],  # Step 3 saved although 3 is not a checkpoint step.
    "save": [2, 3],  # Two signals during the save of 2: 2 finished, then 3 saved.
    "eval": [2],  # Evaluation of step 2 abandoned, step 2 saved.
    "final": [2, 4, 6],  # The final latent statistics abandoned: computed on the rerun.
}


def _steps(workdir):
  folder = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(folder) if s.isdigit()) if os.path.isdir(
      folder) else []


@pytest.mark.slow
@pytest.mark.parametrize("window", list(WINDOWS))
def test_sigterm_saves_and_resumes_exactly(window, straight_autoencoder_run, data_dir,
                                           tmp_path):
  straight_dir, final = straight_autoencoder_run
  workdir = str(tmp_path / "run")
  if window == "restore":
    shutil.copytree(os.path.join(straight_dir, "checkpoints", "2"),
                    os.path.join(workdir, "checkpoints", "2"))
  # The compile window compiles for real (seconds), not from the compilation cache.
  env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": str(window != "compile").lower()}
  done = subprocess.run(
      [sys.executable, "-m", "tests.training._preemption_worker", window, workdir, data_dir],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False, env=env)
  log = done.stdout + done.stderr
  assert done.returncode == 0, log[-4000:]
  assert f"SIGTERM SENT {window}" in log and "SIGTERM: stopping" in log, log[-4000:]
  if window == "compile":
    assert "signal during it: True" in log, log[-4000:]
  if window == "save":
    assert "SIGTERM again (2)" in log
  if window == "eval":
    assert "Evaluation at step 2 abandoned" in log
  final_json = os.path.join(workdir, "autoencoder_final.json")
  if window == "final":
    assert "Latent statistics abandoned" in log and "Stopped before the final results" in log
    assert not os.path.exists(final_json)
  assert _steps(workdir) == WINDOWS[window], log[-4000:]
  if os.path.isdir(os.path.join(workdir, "checkpoints")):  # No half-written step left.
    assert all(f.isdigit() for f in os.listdir(os.path.join(workdir, "checkpoints")))
  if not WINDOWS[window]:
    # Nothing saved, nothing half-written: the rerun is a new run, which the straight run
    # already is (the same config and seed), so it is not trained a second time here.
    return

  resumed, _ = loop.train_and_evaluate(runs.autoencoder_config(data_dir), workdir)
  assert int(resumed.step) == runs.STEPS
  runs.assert_same_state(final, resumed)
  assert os.path.exists(final_json)
