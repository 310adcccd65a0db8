"""Worker for preemption_test.py: train.py's main on the shared tiny digits autoencoder run
(tests/training/runs.py), with SIGTERM sent to this process at one controlled point.

  python -m tests.training._preemption_worker WINDOW WORKDIR DATA_DIR

WINDOW: 'imports' (before jax is imported), 'restore' (while a checkpoint is read),
'compile' (from another thread while XLA compiles the train step), 'step' (while step 3
runs), 'save' (twice, while the asynchronous save of step 2 is written), 'eval' (as the
evaluation of step 2 starts), 'final' (as the final latent statistics of the finished run
start). Prints 'SIGTERM SENT <window>' when it sent the signal.
"""

import os
import signal
import sys
import threading
import time

from tests.training import runs

def _terminate(window: str, times: int = 1) -> None:
  for _ in range(times):
    os.kill(os.getpid(), signal.SIGTERM)
  print(f"SIGTERM SENT {window}", flush=True)


def _arm(window: str) -> None:
  from ldm_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  from ldm_jax.training import loop  # pylint: disable=import-outside-toplevel

  if window == "restore":
    restore = checkpoint.restore_latest

    def restore_latest(*args, **kwargs):
      _terminate(window)
      return restore(*args, **kwargs)
    checkpoint.restore_latest = restore_latest

  if window in ("compile", "step"):
    compile_step = loop._compile_train_step  # pylint: disable=protected-access

    def compile_train_step(*args):
      if window == "compile":
        sent = threading.Event()
        threading.Timer(0.3, lambda: (_terminate(window), sent.set())).start()
        start = time.perf_counter()
        compiled = compile_step(*args)
        # The handler ran as soon as compile returned; was the signal sent before that?
        print(f"COMPILE {time.perf_counter() - start:.2f} s, signal during it: "
              f"{sent.is_set()}", flush=True)
        return compiled
      compiled, calls = compile_step(*args), [0]

      def run(*step_args):
        out = compiled(*step_args)  # Dispatched: the step runs while the signal arrives.
        calls[0] += 1
        if calls[0] == 3:
          _terminate(window)
        return out
      return run
    loop._compile_train_step = compile_train_step  # pylint: disable=protected-access

  if window == "save":
    save = checkpoint.save

    def save_and_terminate(manager, step, *args, **kwargs):
      saved = save(manager, step, *args, **kwargs)
      if step == 2:
        _terminate(window, times=2)
      return saved
    checkpoint.save = save_and_terminate

  if window == "eval":
    evaluate = loop.evaluate

    def evaluate_after_signal(*args, **kwargs):
      _terminate(window)
      return evaluate(*args, **kwargs)
    loop.evaluate = evaluate_after_signal

  if window == "final":
    from ldm_jax.training import autoencoder_stage  # pylint: disable=import-outside-toplevel
    statistics = autoencoder_stage.latent_statistics

    def statistics_after_signal(*args, **kwargs):
      _terminate(window)
      return statistics(*args, **kwargs)
    autoencoder_stage.latent_statistics = statistics_after_signal


def main(window: str, workdir: str, data_dir: str) -> None:
  if window == "imports":
    from ldm_jax.training import preemption  # pylint: disable=import-outside-toplevel
    preemption.install_for_process()  # What train.py's first lines do.
    _terminate(window)
  # ml_collections' config flag finds its --config.* overrides in sys.argv when defined.
  sys.argv = ["train.py", *runs.train_flags(workdir, data_dir)]
  import train  # pylint: disable=import-outside-toplevel
  from absl import app  # pylint: disable=import-outside-toplevel
  _arm(window)
  app.run(train.main)


if __name__ == "__main__":
  main(*sys.argv[1:])
