"""Reading PyTorch weights from disk: single files and diffusers folders.

* `.safetensors` is read with `safetensors.numpy` (no torch needed);
* `.ckpt` / `.pt` / `.bin` with `torch.load(weights_only=True)` (torch needed);
* a diffusers model folder (`config.json` + `diffusion_pytorch_model[.fp16].safetensors` or
  `.bin`, sharded with an `.index.json` or not), or a pipeline folder with a subfolder.
A CompVis/Lightning `.ckpt` keeps its weights under `state_dict`; that level is removed.
"""

import json
import os
from typing import Any

import numpy as np

from ldm_jax.convert import torch_weights

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")


def _torch_load(path: str) -> dict[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {path} needs PyTorch (pip install torch); .safetensors "
                      f"files are read without it.") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  return state.get("state_dict", state) if isinstance(state, dict) else state


def read_file(path: str) -> dict[str, np.ndarray]:
  """name -> array from one weights file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No weights file {path}.")
  if path.endswith(".safetensors"):  # bf16 comes back as ml_dtypes.bfloat16 arrays.
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return dict(load_file(path))
  if path.endswith((".ckpt", ".pt", ".pth", ".bin")):
    return {k: torch_weights.to_numpy(v) for k, v in _torch_load(path).items() if hasattr(v, "shape")}
  raise ValueError(f"{path}: expected a .safetensors, .ckpt, .pt, .pth or .bin file.")


def read_folder(folder: str, subfolder: str | None = None) -> tuple[dict, dict]:
  """(state dict, config.json) of a diffusers model folder (or pipeline/subfolder)."""
  root = os.path.join(folder, subfolder) if subfolder else folder
  if not os.path.isfile(os.path.join(root, "config.json")):
    raise FileNotFoundError(f"{root} is not a diffusers model folder (no config.json); for a "
                            f"pipeline folder name its subfolder, e.g. 'unet' or 'vae'.")
  with open(os.path.join(root, "config.json")) as f:
    config = json.load(f)
  for name in WEIGHT_NAMES:
    index = os.path.join(root, name + ".index.json")
    if os.path.isfile(index):
      with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      state: dict[str, np.ndarray] = {}
      for shard in shards:
        state.update(read_file(os.path.join(root, shard)))
      return state, config
    if os.path.isfile(os.path.join(root, name)):
      return read_file(os.path.join(root, name)), config
  raise FileNotFoundError(f"{root} has config.json but none of {WEIGHT_NAMES} (or their "
                          f".index.json).")
