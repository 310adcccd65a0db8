"""A trained LDM run, read back from its workdir for sampling: model, parameters, config.

Only the parameters sampling uses are read (the EMA ones, or the trained ones): not the
optimiser's moments, which are twice their size.
"""

import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ldm_jax.ldm import model as model_lib
from ldm_jax.models import networks

_NEW_NAMES = {old: new for new, old in networks.LEGACY_PARAM_KEYS.items()}


def load_run(workdir: str, *, step: int | None = None, use_ema: bool = True,
             overrides: dict | None = None):
  """(LatentDiffusion, sampling params, config, step) of the newest (or given) checkpoint.

  The config is the one saved with the checkpoint; `overrides` ({'sampling.steps': 50, ...})
  change fields that do not alter the parameters. EMA parameters are used when the run kept
  them and `use_ema`.
  """
  directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir!r} has no checkpoints/ folder: expected the --workdir "
                            f"of an LDM training run.")
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True), item_handlers=handlers) as manager:
    steps = manager.all_steps()
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {directory}.")
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise ValueError(f"step={step} is not in {directory} (it has {sorted(steps)}).")
    config = ml_collections.ConfigDict(manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config)
    if config.get("stage") != "ldm":
      raise ValueError(f"{workdir!r} holds a {config.get('stage')!r} run, not an LDM run.")
    config = networks.migrate_config(config)  # Runs saved with `config.unet`.
    for key, value in (overrides or {}).items():
      _set(config, key, value)
    saved = manager.item_metadata(step)["state"]
    saved = getattr(saved, "tree", saved)
    part = "ema_params" if use_ema and saved.get("ema_params") is not None else "params"
    wanted = {part: {"model": saved[part]["model"]}}
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted),
        restore_args=jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), wanted),
        partial_restore=True))).state
  # Runs saved before `network` existed hold the denoiser under 'unet'.
  params = {_NEW_NAMES.get(k, k): v for k, v in state[part]["model"].items()}
  return model_lib.LatentDiffusion(config), params, config, step


def _set(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for name in parents:
    if name not in node:
      raise KeyError(f"override {dotted!r}: the saved config has no block {name!r}.")
    node = node[name]
  if leaf not in node:
    raise KeyError(f"override {dotted!r}: the saved config has no field {leaf!r}.")
  node[leaf] = value
