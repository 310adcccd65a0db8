"""PyTorch state dicts (diffusers naming) -> our Flax parameter trees, checked strictly.

Our submodules carry diffusers' names, so a key maps by rule: `down_blocks.0.resnets.1.conv1.
weight` -> `down_blocks_0/resnets_1/conv1/kernel`. Conv weights go OIHW -> HWIO, linear
weights (out, in) -> (in, out), and a linear weight fills a 1x1 conv (or the reverse) where
the two layouts meet; values take the target's dtype (fp16/bf16 files -> float32 params). The result is checked against the target tree (from `jax.eval_shape`):
every missing, unexpected or mis-shaped key is reported in one error, with both shapes.
"""

import re
from typing import Any, Mapping

import flax
import numpy as np

# The leaf names a PyTorch `weight` may become, tried in order against the target tree.
_WEIGHT_LEAVES = ("kernel", "scale", "embedding")


class WeightMismatchError(ValueError):
  """Raised with the full list of keys that do not fit the target parameter tree."""


def torch_path(key: str) -> str:
  """'a.0.b.weight' -> 'a_0/b/weight' (numeric parts join the name before them)."""
  parts: list[str] = []
  for part in key.split("."):
    if part.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{part}"
    else:
      parts.append(part)
  return "/".join(parts)


def _convert(value: np.ndarray, leaf: str, target_shape: tuple[int, ...]) -> np.ndarray:
  if leaf != "kernel":
    return value
  if value.ndim == 4:  # Conv2d (out, in, kh, kw) -> (kh, kw, in, out)
    value = value.transpose(2, 3, 1, 0)
    if len(target_shape) == 2 and value.shape[:2] == (1, 1):
      value = value[0, 0]  # A 1x1 conv feeding a Dense.
    return value
  if value.ndim == 3 and value.shape[-1] == 1:  # Conv1d with kernel 1: a Linear.
    value = value[..., 0]
  if value.ndim == 2:  # Linear (out, in) -> (in, out)
    value = value.T
    if len(target_shape) == 4:
      value = value[None, None]  # A Linear feeding a 1x1 conv.
    return value
  return value


def _flat_target(target) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], Any]]:
  flat = flax.traverse_util.flatten_dict(target)
  return {"/".join(path): (path, tuple(leaf.shape), leaf.dtype) for path, leaf in flat.items()}


# Our names that stand for PyTorch lists (`resnets_1` <-> `resnets.1`).
_LIST_NAMES = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers",
               "upsamplers", "transformer_blocks", "to_out", "net", "layers")


def diffusers_keys(target) -> list[str]:
  """The diffusers (PyTorch) names of every parameter of our tree `target`."""
  keys = []
  for name in _flat_target(target):
    parts = []
    for part in name.split("/"):
      base, _, index = part.rpartition("_")
      parts.append(f"{base}.{index}" if base in _LIST_NAMES and index.isdigit() else part)
    module, leaf = parts[:-1], parts[-1]
    keys.append(".".join(module + ["weight" if leaf in _WEIGHT_LEAVES else leaf]))
  return keys


def to_flax(state_dict: Mapping[str, Any], target, *, prefix: str = "",
            ignore: tuple[str, ...] = (), unexpected: tuple[str, ...] = ()) -> dict:
  """Builds the parameter tree `target` (shapes only) from a PyTorch state dict.

  Args:
    state_dict: name -> array-like (numpy, torch tensor); diffusers names.
    target: the parameter tree to fill, e.g. `jax.eval_shape(model.init, ...)['params']`.
    prefix: only keys starting with it are used, with it removed (e.g. 'first_stage.').
    ignore: regular expressions of source keys to leave out on purpose (never silently).
    unexpected: source keys the caller already found no place for; reported with the rest.

  Raises:
    WeightMismatchError: listing every unexpected, mis-shaped and missing key.
  """
  targets = _flat_target(target)
  filled: dict[tuple[str, ...], np.ndarray] = {}
  unexpected, misshaped = list(unexpected), []
  for key, value in state_dict.items():
    if not key.startswith(prefix) or any(re.search(p, key) for p in ignore):
      continue
    path = torch_path(key[len(prefix):])
    module, _, leaf = path.rpartition("/")
    candidates = _WEIGHT_LEAVES if leaf == "weight" else (leaf,)
    paths = [f"{module}/{c}" if module else c for c in candidates]
    match = next((p for p in paths if p in targets), None)
    if match is None:
      unexpected.append(f"{key} {tuple(np.shape(value))}")
      continue
    tree_path, shape, dtype = targets[match]
    array = _convert(to_numpy(value), tree_path[-1], shape)
    if array.shape != shape:
      misshaped.append(f"{key} {tuple(np.shape(value))} -> {match}: converted {array.shape}, "
                       f"expected {shape}")
      continue
    # fp16/bf16 checkpoints become the model's parameter dtype (float32 by default).
    filled[tree_path] = np.asarray(array, dtype=dtype)
  missing = [f"{name} {shape}" for name, (path, shape, _) in targets.items()
             if path not in filled]
  if unexpected or misshaped or missing:
    sections = [("unexpected (no such parameter)", unexpected),
                ("wrong shape", misshaped), ("missing (no source key)", missing)]
    raise WeightMismatchError("Checkpoint does not fit the model:\n" + "\n".join(
        f"  {title}: {len(items)}\n" + "\n".join(f"    {i}" for i in sorted(items))
        for title, items in sections if items))
  return flax.traverse_util.unflatten_dict(filled)


def to_numpy(value) -> np.ndarray:
  """A numpy array from a numpy array, a list, or a torch tensor (bfloat16 -> float32)."""
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch here.
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    value = value.numpy()
  return np.asarray(value)
