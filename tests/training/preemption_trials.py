"""SIGTERM at random times in training runs (not collected by pytest: it takes minutes).

  python -m tests.training.preemption_trials --trials=20 --data_dir=DIR [--seed=0]

Starts `train.py` on the tiny digits autoencoder (40 steps, a checkpoint every 4, an
evaluation every 8) and sends SIGTERM after a random delay (0.2 s .. 60 s: in imports,
restore, compile, steps, saves or evaluations, wherever it falls), then starts it again in
the same workdir, until the run reaches its last step; then a new run in a new workdir.
Every interrupted process must exit 0 and the next one must resume from the newest step it
left; every run, once finished, must equal a run never interrupted, bit for bit. Counts only
trials whose signal reached a live process. Prints one line per trial.
"""

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, CHECKPOINT_EVERY = 40, 4


def _command(workdir: str, data_dir: str) -> list[str]:
  return [sys.executable, "train.py", "--config=configs/digits_autoencoder.py:tiny",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          f"--config.num_steps={STEPS}", f"--config.checkpoint_every={CHECKPOINT_EVERY}",
          "--config.eval_every=8", "--config.loss.disc_start=2"]


def _final_params(workdir: str, data_dir: str):
  """The state the workdir's run ends with (trained to the end here if it is not)."""
  from configs import digits_autoencoder  # pylint: disable=import-outside-toplevel
  from ldm_jax.training import loop  # pylint: disable=import-outside-toplevel
  from tests.training import runs  # pylint: disable=import-outside-toplevel
  config = digits_autoencoder.get_config("tiny")
  config.data.data_dir = data_dir
  config.update(num_steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, eval_every=8)
  config.loss.disc_start = 2
  state, _ = loop.train_and_evaluate(config, workdir)
  return runs.state_leaves(state)


def _steps(workdir: str) -> list[int]:
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(s) for s in os.listdir(folder) if s.isdigit())


def _same(a, b) -> bool:
  return len(a) == len(b) and all(x.shape == y.shape and (x == y).all() for x, y in zip(a, b))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--trials", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--max_delay", type=float, default=60.0)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  root = tempfile.mkdtemp(prefix="preemption_trials_")
  straight = _final_params(os.path.join(root, "straight"), args.data_dir)
  problems, trials, runs = [], 0, 0
  workdir = None
  while trials < args.trials:
    if workdir is None:
      runs += 1
      workdir = os.path.join(root, f"run{runs}")
    before = _steps(workdir)
    delay = rng.uniform(0.2, args.max_delay)
    start = time.perf_counter()
    process = subprocess.Popen(_command(workdir, args.data_dir), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
      process.wait(timeout=delay)
      signalled = False
    except subprocess.TimeoutExpired:
      process.send_signal(signal.SIGTERM)
      signalled = True
    log = process.communicate(timeout=600)[0]
    resumed = re.search(r"Resumed from step (\d+)", log)
    stopped = re.search(r"Stopped (?:at step \d+|before training|after compiling)", log)
    trouble = []
    if process.returncode != 0:
      trouble.append(f"exit {process.returncode}")
    # (A signal in imports or restore stops the process before it says where it starts.)
    if before and ("Initialised a new" in log or (
        resumed and int(resumed.group(1)) != before[-1])):
      trouble.append(f"did not resume from step {before[-1]}")
    finished = STEPS in _steps(workdir)
    if finished:
      if not _same(_final_params(workdir, args.data_dir), straight):
        trouble.append("the finished run differs from the straight run")
    trials += signalled
    print(f"run {runs} {'trial ' + str(trials) if signalled else 'no signal'}: "
          f"delay {delay:4.1f} s, exit {process.returncode} after "
          f"{time.perf_counter() - start:4.1f} s, resumed from "
          f"{resumed.group(1) if resumed else '-'}, "
          f"{stopped.group(0) if stopped else 'no stop logged'}; checkpoints "
          f"{_steps(workdir)}"
          f"{'; finished, equal to the straight run' if finished and not trouble else ''}"
          f"{'; PROBLEM: ' + ', '.join(trouble) if trouble else ''}", flush=True)
    if trouble:
      problems.append((runs, trials, trouble))
      print(log[-3000:])
    if finished:
      workdir = None
  print(f"{trials} SIGTERM trials over {runs} runs: {len(problems)} problems ({root})")
  sys.exit(1 if problems else 0)


if __name__ == "__main__":
  main()
