"""SIGTERM as a request to stop cleanly: the loop saves the step it reached (or keeps the last
good checkpoint) and returns, so the process exits 0 and rerunning it resumes.

A scheduler sends SIGTERM at any moment: during imports, while a checkpoint is restored,
during compilation, a step, an asynchronous save or an evaluation. The handler only sets a
flag (it never raises into the code it interrupts), and the loop polls it where stopping is
safe. `train.py` installs the handler before anything else is imported and keeps it for the
life of the process; `train_and_evaluate` called from other code installs it for the run
and puts the previous handler back afterwards.

This module imports nothing heavy: train.py imports it first.
"""

import signal
import threading

from absl import logging


class Preemption:
  """The SIGTERM flag of this process. Repeated signals (a second SIGTERM while saving) are
  counted and logged, never acted on twice."""

  def __init__(self):
    self.signals = 0

  @property
  def requested(self) -> bool:
    return self.signals > 0

  def handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self.signals += 1
    if self.signals == 1:
      logging.warning("SIGTERM: stopping at the next safe point; the step reached is saved "
                      "(or the last good checkpoint kept), then the run exits 0.")
    else:
      logging.warning("SIGTERM again (%d): already stopping; the checkpoint being written is "
                      "finished first.", self.signals)

  def agreed(self) -> bool:
    """Whether any process was asked to stop (a collective call in a multi-process run:
    every process must make it at the same point)."""
    import jax  # pylint: disable=import-outside-toplevel
    if jax.process_count() == 1:
      return self.requested
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))


_process_handler: Preemption | None = None


def install_for_process() -> Preemption:
  """Installs the handler for the rest of the process (train.py, before its imports)."""
  global _process_handler  # pylint: disable=global-statement
  if _process_handler is None:
    _process_handler = Preemption()
    signal.signal(signal.SIGTERM, _process_handler.handle)
  return _process_handler


class installed:  # pylint: disable=invalid-name
  """`with installed() as preemption:` the process's handler when train.py installed one;
  else one installed for the block, the previous handler restored after it."""

  def __enter__(self) -> Preemption:
    self._previous = None
    if _process_handler is not None and signal.getsignal(
        signal.SIGTERM) == _process_handler.handle:
      return _process_handler
    self._preemption = Preemption()
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._preemption.handle)
    else:
      logging.warning("Training outside the main thread: SIGTERM is not turned into a "
                      "clean stop (Python delivers signals to the main thread only).")
    return self._preemption

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
