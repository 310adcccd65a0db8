"""optax optimisers from a config block, one per trained part (generator, discriminator, ...).

An `optimizer` block:
  name: 'adamw' | 'adam';  b1, b2, eps, weight_decay (adamw only)
  learning_rate: peak rate;  schedule: 'constant' | 'cosine';  warmup_steps;  decay_steps
      (cosine: steps after warmup to reach end_learning_rate; None: the run's num_steps)
  end_learning_rate (cosine);  grad_clip_norm (None: no clipping)
  accumulate_steps: gradient accumulation over this many steps (optax.MultiSteps)
  frozen: regexes over '/'-joined parameter paths; matching parameters are never updated
"""

import re

import jax
import ml_collections
import optax


def learning_rate_schedule(block: ml_collections.ConfigDict, num_steps: int):
  peak, warmup = float(block.learning_rate), int(block.get("warmup_steps", 0))
  kind = block.get("schedule", "constant")
  if kind == "constant":
    main = optax.constant_schedule(peak)
  elif kind == "cosine":
    decay = block.get("decay_steps") or max(num_steps - warmup, 1)
    main = optax.cosine_decay_schedule(peak, decay, alpha=float(
        block.get("end_learning_rate", 0.0)) / peak if peak else 0.0)
  else:
    raise ValueError(f"optimizer.schedule={kind!r}: expected 'constant' or 'cosine'.")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def parameter_path(path) -> str:
  """A tree path as the '/'-joined names `frozen` patterns match: 'network/down_blocks_0/...'.

  Module names may hold '/' themselves, so labels are built on the tree's own paths, never
  by splitting such a string back into a tree.
  """
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def _frozen_labels(params, patterns):
  compiled = [re.compile(p) for p in patterns]
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if any(p.search(parameter_path(path)) for p in compiled)
      else "trained", params)
  return labels, sum(label == "frozen" for label in jax.tree.leaves(labels))


def create_optimizer(block: ml_collections.ConfigDict, *, num_steps: int,
                     params=None) -> optax.GradientTransformation:
  """The optax transformation for `block`; `params` (a tree or its shapes) resolves `frozen`."""
  name = block.get("name", "adamw")
  schedule = learning_rate_schedule(block, num_steps)
  b1, b2, eps = float(block.get("b1", 0.9)), float(block.get("b2", 0.999)), float(
      block.get("eps", 1e-8))
  if name == "adamw":
    opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps,
                      weight_decay=float(block.get("weight_decay", 0.0)))
  elif name == "adam":
    opt = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
  else:
    raise ValueError(f"optimizer.name={name!r}: expected 'adamw' or 'adam'.")
  if block.get("grad_clip_norm"):
    opt = optax.chain(optax.clip_by_global_norm(float(block.grad_clip_norm)), opt)
  frozen = tuple(block.get("frozen", ()) or ())
  if frozen:
    if params is None:
      raise ValueError("optimizer.frozen needs the parameter tree to resolve its patterns.")
    labels, count = _frozen_labels(params, frozen)
    if not count:
      paths = [parameter_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)][:5]
      raise ValueError(f"optimizer.frozen={list(frozen)} matches no parameter (paths look "
                       f"like {paths}).")
    opt = optax.multi_transform({"trained": opt, "frozen": optax.set_to_zero()}, labels)
  accumulate = int(block.get("accumulate_steps", 1))
  if accumulate < 1:
    raise ValueError(f"optimizer.accumulate_steps={accumulate}: expected >= 1.")
  if accumulate > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=accumulate)
  return opt


def current_learning_rate(block, num_steps: int, step) -> jax.Array:
  """The rate the schedule gives at optimiser step `step` (for logging)."""
  accumulate = int(block.get("accumulate_steps", 1))
  return learning_rate_schedule(block, num_steps)(step // accumulate)
