"""`train_and_evaluate(config, workdir)`: the one training loop every stage runs.

The stage (autoencoder here, LDM next) supplies pure functions; this file owns the mesh,
the sharded state, jit, checkpoints, preemption, metrics and evaluation.
"""

import collections
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from clu import parameter_overview
from clu import periodic_actions

from ldm_jax.data import pipeline
from ldm_jax.models import networks
from ldm_jax.parallel import sharding
from ldm_jax.training import checkpoint
from ldm_jax.training import evals as evals_lib
from ldm_jax.training import preemption as preemption_lib
from ldm_jax.training import stages

NONFINITE_MODES = ("skip", "stop")
STEPS_AHEAD = 2  # For a config without `steps_ahead` (recipes/common.py sets it).


class NonFiniteError(FloatingPointError):
  pass


def _check_config(config: ml_collections.ConfigDict) -> None:
  if config.get("nonfinite", "skip") not in NONFINITE_MODES:
    raise ValueError(f"nonfinite={config.nonfinite!r}: expected one of {NONFINITE_MODES}.")
  ahead = config.get("steps_ahead", STEPS_AHEAD)
  if isinstance(ahead, bool) or not isinstance(ahead, (int, np.integer)) or ahead < 0:
    raise ValueError(f"steps_ahead={ahead!r}: expected how many steps the host may dispatch "
                     "ahead of the device (an integer >= 0; 0 waits for every step).")
  for key in ("num_steps", "log_every", "eval_every", "checkpoint_every"):
    if int(config[key]) < 1:
      raise ValueError(f"{key}={config[key]}: expected a positive number of steps.")


def _nonfinite_names(metrics) -> list[str]:
  return [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v)))]


class _FiniteWatch:
  """nonfinite='stop' without a host round trip per step: each step's metrics (device
  scalars) are kept and read together at the loop's sync points (logging, evaluation,
  checkpoints, the end, or every CHECK_EVERY steps), and the first non-finite step since the
  last read is reported. Its update, like every non-finite one, was not applied (the step's
  guard), and no checkpoint is written before the read."""
  CHECK_EVERY = 100

  def __init__(self, enabled: bool, directory: str):
    self.enabled, self.directory, self.pending = enabled, directory, []

  def add(self, step: int, metrics) -> None:
    if self.enabled:
      self.pending.append((step, metrics))
      if len(self.pending) >= self.CHECK_EVERY:
        self.check(step)

  def check(self, now: int) -> None:
    if not self.pending:
      return
    flags = jax.device_get([metrics["finite"] for _, metrics in self.pending])
    for (step, metrics), ok in zip(self.pending, flags):
      if not ok:
        bad = _nonfinite_names(jax.device_get(metrics))
        raise NonFiniteError(
            f"Step {step}: non-finite {', '.join(bad) or 'gradients'} (seen at step {now}); "
            f"the update was not applied and the last good checkpoint in {self.directory} "
            f"is kept. Set nonfinite='skip' to drop such updates and continue.")
    self.pending.clear()


def evaluate(stage, state, config, mesh, eval_step, *, writer=None, step=None,
             max_batches=None, abandon=None):
  """Averages the stage's per-example eval metrics over the whole eval split; None when
  `abandon()` turned true on the way (nothing is written then)."""
  iterator = pipeline.create_iterator(config.data, seed=config.seed, mesh=mesh, train=False)
  totals, first_batch = {}, None
  max_batches = max_batches or config.get("eval_batches")
  for i, batch in enumerate(iterator):
    if max_batches and i >= max_batches:
      break
    if abandon is not None and abandon():
      logging.warning("Evaluation at step %s abandoned after %d batches.", step, i)
      return None
    batch = stage.prepare(batch, mesh, ("mask",))
    first_batch = first_batch or batch
    averages = jax.device_get(eval_step(state, batch))  # {name: clu metrics.Average}
    totals = {k: totals[k].merge(v) if k in totals else v for k, v in averages.items()}
  results = {f"eval/{k}": float(v.compute()) for k, v in totals.items()}
  if writer is not None:
    writer.write_scalars(step, results)
    if first_batch is not None:
      writer.write_images(step, {f"eval/{k}": np.asarray(v) for k, v in
                                 jax.device_get(stage.image_grids(state, first_batch)).items()})
  return results


def _compile_train_step(train_step, state, batch, consts):
  """The train step compiled once for these shardings (a seam the preemption tests use)."""
  return train_step.lower(state, batch, consts).compile()


def _stop_now(preemption) -> bool:
  """Whether to stop here (collective with several processes: all call it at one point)."""
  return preemption.agreed()


def _stop_after(preemption, step: int) -> bool:
  """Polled after every step; several processes agree every 10 steps (a collective)."""
  if jax.process_count() == 1:
    return preemption.requested
  return step % 10 == 0 and preemption.agreed()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains `config.stage` in `workdir`, resuming from its latest checkpoint; returns the
  final state and the last eval metrics.

  SIGTERM at any point stops the run cleanly (see preemption.py): the step reached is saved
  (or, before the first step, the last good checkpoint kept) and this returns normally.
  """
  with preemption_lib.installed() as preemption:
    return _train_and_evaluate(config, workdir, preemption)


def _train_and_evaluate(config, workdir, preemption):
  config = networks.migrate_config(config)  # A config written with `config.unet`.
  _check_config(config)
  workdir = os.path.abspath(workdir)
  mesh = sharding.create_mesh(config.mesh)
  stage = stages.create(config)
  evaluators = evals_lib.create(config)  # Checked, weights read, before anything runs.
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=True)
  train_iter = pipeline.create_iterator(config.data, seed=config.seed, mesh=mesh, train=True)
  rng = jax.random.key(config.seed)
  abstract = jax.eval_shape(stage.init_state, rng)
  state_shardings = sharding.tree_shardings(abstract, mesh)
  manager = checkpoint.create_manager(workdir, config)
  state, eval_metrics = None, {}
  try:
    checkpoint.check_resumable(manager, config)
    state, restored_step = checkpoint.restore_latest(
        manager, checkpoint.abstract_with_shardings(abstract, state_shardings), train_iter)
    if _stop_now(preemption):
      logging.warning("Stopped before training after SIGTERM (%s); rerun the same command to "
                      "go on.", "nothing was saved yet" if state is None else
                      f"checkpoint step {restored_step} is kept")
      return state, eval_metrics
    if state is None:
      state = jax.jit(stage.init_state, out_shardings=state_shardings)(
          rng, **getattr(stage, "init_inputs", {}))
      logging.info("Initialised a new %s run in %s.", config.stage, workdir)
    else:
      logging.info("Resumed from step %d in %s.", restored_step, workdir)
    if jax.process_index() == 0:
      parameter_overview.log_parameter_overview(state.params)
      writer.write_hparams({k: v for k, v in _flat(config).items()
                            if isinstance(v, (int, float, str, bool))})

    batch_sharding = sharding.batch_sharding(mesh)
    metric_sharding = sharding.replicated(mesh)
    consts = jax.device_put(stage.constants, metric_sharding)
    train_step = jax.jit(stage.train_step,
                         in_shardings=(state_shardings, batch_sharding, metric_sharding),
                         out_shardings=(state_shardings, metric_sharding), donate_argnums=0)
    jitted_eval = jax.jit(stage.eval_step,
                          in_shardings=(state_shardings, batch_sharding, metric_sharding),
                          out_shardings=metric_sharding)
    eval_step = lambda state, batch: jitted_eval(state, batch, consts)
    # Only one process may abandon an evaluation: the others' batches must match.
    abandon = (lambda: preemption.requested) if jax.process_count() == 1 else None

    step = int(jax.device_get(state.step))
    watch = _FiniteWatch(config.get("nonfinite", "skip") == "stop", manager.directory)
    hooks = [periodic_actions.ReportProgress(num_train_steps=config.num_steps, writer=writer)]
    compiled = None
    # The host dispatches steps ahead of the device: while step i runs, the batches of steps
    # up to i + steps_ahead are read, transferred and queued. Waiting on step i's outputs
    # once step i + steps_ahead is dispatched bounds the batches held on the devices.
    in_flight = collections.deque()
    steps_ahead = int(config.get("steps_ahead", STEPS_AHEAD))
    while step < config.num_steps:
      batch = stage.prepare(next(train_iter), mesh)
      if compiled is None:
        start = time.perf_counter()
        compiled = _compile_train_step(train_step, state, batch, consts)
        seconds = time.perf_counter() - start
        logging.info("Compiled the train step in %.1f s.", seconds)
        writer.write_scalars(step, {"compile_seconds": seconds})
        if _stop_now(preemption):
          logging.warning("Stopped after compiling, at step %d, after SIGTERM; its checkpoint "
                          "(if any) is kept. Rerun the same command to go on.", step)
          break
      state, metrics = compiled(state, batch, consts)  # Dispatched: nothing waits for it.
      step += 1
      in_flight.append(metrics)
      if len(in_flight) > steps_ahead:
        jax.block_until_ready(in_flight.popleft())
      watch.add(step, metrics)
      for hook in hooks:
        hook(step)
      if step % config.log_every == 0 or step == config.num_steps:
        watch.check(step)
        writer.write_scalars(step, jax.device_get(
            {**metrics, "skipped_updates": state.skipped}))
      if step % config.eval_every == 0 or step == config.num_steps:
        watch.check(step)
        results = evaluate(stage, state, config, mesh, eval_step, writer=writer, step=step,
                           abandon=abandon)
        if results is not None:
          eval_metrics = results
          logging.info("Step %d eval: %s", step, eval_metrics)
      if evaluators and not (jax.process_count() == 1 and preemption.requested):
        measured = evals_lib.run(evaluators, stage, state, config, step)
        if measured:
          writer.write_scalars(step, measured)
          eval_metrics = {**eval_metrics, **measured}
      stopping = _stop_after(preemption, step)
      if step % config.checkpoint_every == 0 or step == config.num_steps or stopping:
        watch.check(step)
        checkpoint.save(manager, step, state, train_iter, config, force=True)
      if stopping:
        logging.warning("Stopped at step %d after SIGTERM (saved); rerun the same command to "
                        "go on.", step)
        break
    if step >= config.num_steps:
      # Final results (the autoencoder's scale_factor over the train split) are skipped or
      # abandoned after a SIGTERM; the saved last step computes them when rerun.
      results = None if _stop_now(preemption) else stage.finalize(state, config, mesh,
                                                                   abandon=abandon)
      if results is None:
        logging.warning("Stopped before the final results after SIGTERM; step %d is saved. "
                        "Rerun the same command to compute them.", step)
      elif results and jax.process_index() == 0:
        with open(os.path.join(workdir, f"{config.stage}_final.json"), "w") as f:
          json.dump({"step": step, **results}, f, indent=1)
        logging.info("Final results: %s", results)
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.flush()
  return state, eval_metrics


def _flat(config, prefix=""):
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
