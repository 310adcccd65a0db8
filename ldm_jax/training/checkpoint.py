"""Orbax checkpoints of a run: train state + input-pipeline position + config, per step.

Layout: WORKDIR/checkpoints/<step>/{state, data, config}. Saves are asynchronous (the state
is copied off the devices, then written in the background); Orbax finalises a step only
once every item is complete, so a killed save leaves no half step behind. `restore_latest`
walks back from the newest step when one cannot be read, saying so in the log.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from ldm_jax.data.pipeline import DataIterator
from ldm_jax.models import networks


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves/restores each process's `DataIterator` position (its own files, every process)."""

  def save(self, directory, args: "DataIteratorSave"):
    args.iterator.save(os.fspath(directory))

  def restore(self, directory, args: "DataIteratorRestore"):
    args.iterator.restore(os.fspath(directory))
    return args.iterator


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  iterator: DataIterator


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  iterator: DataIterator


def _use_replica_parallel_only_across_hosts():
  """Orbax's replica-parallel save writes a replicated array in slices, one per replica,
  with a small compiled slicing program per array shape. Across hosts that spreads the
  writing; within one process it writes the same bytes after compiling hundreds of
  programs (a tiny LDM's first save: 10.6 s instead of 0.3 s on 2 CPU cores; 800 small
  arrays: 49 s vs 1.7 s). Off for one process, Orbax's default across several."""
  wanted = jax.process_count() > 1
  current = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(current, "_use_replica_parallel", None) != wanted:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=wanted), override=True)


def create_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  _use_replica_parallel_only_across_hosts()
  block = config.checkpoint
  options = ocp.CheckpointManagerOptions(
      max_to_keep=block.get("max_to_keep"), keep_period=block.get("keep_period"),
      enable_async_checkpointing=bool(block.get("async_save", True)), create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save(manager: ocp.CheckpointManager, step: int, state, iterator: DataIterator,
         config: ml_collections.ConfigDict, *, force: bool = False) -> bool:
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=DataIteratorSave(iterator),
      config=ocp.args.JsonSave(json.loads(config.to_json_best_effort()))), force=force)


# Blocks and fields that fix the structure of the saved state: a run cannot resume with
# others (the LDM stage's conditioner, label table and log-variance depend on these fields).
STRUCTURAL_BLOCKS = ("stage", "autoencoder", "network", "conditioner", "conditioning.type",
                     "conditioning.class_input", "conditioning.num_classes",
                     "diffusion.learn_logvar", "diffusion.num_timesteps")
# Model-block fields that change how a step computes, not the parameters: a run may resume
# with bf16 compute, another remat policy or attention kernel (older runs saved
# remat=False and attention_impl='xla', today's defaults are 'none' and 'auto').
EXECUTION_ONLY = ("dtype", "remat", "attention_impl")


# Optimiser fields that shape its state: adam and adamw chain different transforms, clipping
# and accumulation wrap the state, and `frozen` splits it by its parameter labels.
OPTIMIZER_FIELDS = ("optimizer.name", "optimizer.frozen", "disc_optimizer.name",
                    "disc_optimizer.frozen")

# Fields whose value may change on resume, but not which side of a threshold it is on (an
# EMA or not, clipping or not, accumulation or not).
_PRESENCE_FIELDS = {"ema.decay": bool, "optimizer.grad_clip_norm": bool,
                    "disc_optimizer.grad_clip_norm": bool,
                    "optimizer.accumulate_steps": lambda v: int(v or 1) > 1,
                    "disc_optimizer.accumulate_steps": lambda v: int(v or 1) > 1}


def _get(tree: dict, dotted: str):
  for name in dotted.split("."):
    if not isinstance(tree, dict):
      return None
    tree = tree.get(name)
  if dotted in ("autoencoder", "network", "conditioner") and isinstance(tree, dict):
    tree = {k: v for k, v in tree.items() if k not in EXECUTION_ONLY}
  return _PRESENCE_FIELDS[dotted](tree) if dotted in _PRESENCE_FIELDS else tree


def check_resumable(manager: ocp.CheckpointManager, config: ml_collections.ConfigDict):
  """Refuses to resume a run whose newest checkpoint was made by another model config.

  Without this, a state that does not fit would look unreadable and the run would fall
  back step by step; here the differing keys are named instead.
  """
  step = manager.latest_step()
  if step is None:
    return
  try:
    saved = saved_config(manager, step)
  except Exception:  # pylint: disable=broad-except
    return  # An unreadable step: restore_latest reports it.
  saved = _migrated(saved)
  current = json.loads(config.to_json_best_effort())
  differing = [k for k in STRUCTURAL_BLOCKS + OPTIMIZER_FIELDS + tuple(_PRESENCE_FIELDS)
               if _get(saved, k) != _get(current, k)]
  if differing:
    raise ValueError(
        f"{manager.directory} holds a run of another model: {', '.join(differing)} "
        f"differ from this config (saved "
        f"{', '.join(f'{k}={_get(saved, k)}' for k in differing)}). Use a new --workdir, or "
        f"the saved config.")


def restore_latest(manager: ocp.CheckpointManager, abstract_state, iterator: DataIterator):
  """(state, step) from the newest readable step, or (None, None) when there is none.

  `abstract_state` holds ShapeDtypeStructs with shardings, so arrays come back already
  placed on the mesh. A step that fails to load is reported and the previous one tried.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  for i, step in enumerate(steps):
    try:
      legacy = _is_legacy(manager, step)
      target = _renamed(abstract_state, networks.LEGACY_PARAM_KEYS) if legacy else \
          abstract_state
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=DataIteratorRestore(iterator)))
    except Exception as e:  # pylint: disable=broad-except
      older = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "none left to try"
      logging.warning("Checkpoint step %d in %s cannot be restored (%s: %s); %s. It is kept "
                      "as %d.unreadable.", step, manager.directory, type(e).__name__,
                      str(e)[:500], older, step)
      _set_aside(manager, step)
      continue
    state = restored.state
    if legacy:
      logging.info("Step %d was saved with the old parameter names %s; renamed on restore "
                   "(new saves use the new ones).", step,
                   sorted(networks.LEGACY_PARAM_KEYS.values()))
      state = _renamed(state, {old: new for new, old in networks.LEGACY_PARAM_KEYS.items()})
    return state, step
  return None, None


def _migrated(saved: dict) -> dict:
  """A saved config (JSON dict) in today's layout (`unet` -> `network`)."""
  if "unet" not in saved:
    return saved
  config = networks.migrate_config(ml_collections.ConfigDict(saved))
  return json.loads(config.to_json_best_effort())


def _is_legacy(manager: ocp.CheckpointManager, step: int) -> bool:
  """Whether `step` was saved before `config.network` (its parameters under 'unet')."""
  try:
    return "unet" in saved_config(manager, step)
  except Exception:  # pylint: disable=broad-except
    return False  # No readable config: the state restore reports the step.


def _renamed(tree, names: dict[str, str]):
  """`tree` with every dict key in `names` renamed, through the dataclasses (TrainState)
  and named tuples (optax states) around them."""
  if isinstance(tree, dict):
    return {names.get(k, k): _renamed(v, names) for k, v in tree.items()}
  if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
    return dataclasses.replace(tree, **{f.name: _renamed(getattr(tree, f.name), names)
                                        for f in dataclasses.fields(tree) if f.init})
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):
    return type(tree)(*(_renamed(v, names) for v in tree))
  if isinstance(tree, (list, tuple)):
    return type(tree)(_renamed(v, names) for v in tree)
  return tree


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
  """Renames an unreadable step so new saves of that step number can happen (process 0)."""
  if jax.process_index() == 0:
    path = os.path.join(os.fspath(manager.directory), str(step))
    target, n = path + ".unreadable", 1
    while os.path.exists(target):
      target, n = f"{path}.unreadable{n}", n + 1
    os.rename(path, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"set_aside_{step}")
  manager.reload()


def saved_config(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
