"""Reading PyTorch weights from disk: single files and diffusers folders.

* `.safetensors` is read with `safetensors.numpy` (no torch needed);
* `.ckpt` / `.pt` / `.bin` with `torch.load(weights_only=True)` (torch needed);
* a diffusers model folder (`config.json` + `diffusion_pytorch_model[.fp16].safetensors` or
  `.bin`, sharded with an `.index.json` or not; a transformers model's `model.safetensors` /
  `pytorch_model.bin` too), or a pipeline folder with a subfolder.
A CompVis/Lightning `.ckpt` keeps its weights under `state_dict`; that level is removed.
"""

import json
import os
import zipfile
from typing import Any

import numpy as np

from ldm_jax.convert import torch_weights

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin",
                # transformers' names (a pipeline's text_encoder/).
                "model.safetensors", "pytorch_model.bin", "model.fp16.safetensors",
                "pytorch_model.fp16.bin")


class UnreadableWeightsError(ValueError):
  """A weights file that is truncated, of another format, or otherwise cannot be read."""


def _safetensors_problem(path: str, size: int) -> str | None:
  """Why `path` is not a whole safetensors file, from its header alone (None: it looks whole).

  The format: an 8-byte little-endian header length N, N bytes of JSON giving each tensor's
  byte range in the data that follows.
  """
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      return "it is shorter than a safetensors header (8 bytes): truncated or empty"
    length = int.from_bytes(head, "little")
    if length > size - 8:
      return (f"its header claims {length:,} bytes but the file has {size - 8:,} after the "
              f"length field: truncated, or not a safetensors file")
    try:
      header = json.loads(f.read(length))
    except ValueError:
      return "its header is not JSON: not a safetensors file"
  ends = [int(v["data_offsets"][1]) for k, v in header.items()
          if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
  needed = 8 + length + max(ends, default=0)
  if needed > size:
    return f"truncated: its header needs {needed:,} bytes, the file has {size:,}"
  return None


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  size = os.path.getsize(path)
  problem = _safetensors_problem(path, size)
  if problem:
    raise UnreadableWeightsError(f"{path} ({size:,} bytes) cannot be read: {problem}.")
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:  # bf16 comes back as ml_dtypes.bfloat16 arrays.
    return dict(load_file(path))
  except Exception as e:  # pylint: disable=broad-except
    raise UnreadableWeightsError(f"{path} ({size:,} bytes) cannot be read as a safetensors "
                                 f"file ({type(e).__name__}: {e}).") from e


def _torch_load(path: str) -> dict[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"Reading {path} needs PyTorch (pip install torch); .safetensors "
                      f"files are read without it.") from e
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    magic = f.read(4)
  # torch.save writes a zip archive (since torch 1.6) or, before, a pickle stream.
  if magic[:2] != b"PK" and magic[:1] != b"\x80":
    raise UnreadableWeightsError(f"{path} ({size:,} bytes) is not a PyTorch checkpoint (it "
                                 f"is neither a zip archive nor a pickle).")
  if magic[:2] == b"PK" and not zipfile.is_zipfile(path):
    raise UnreadableWeightsError(f"{path} ({size:,} bytes) cannot be read: truncated (a "
                                 f"PyTorch zip archive without its end record).")
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise UnreadableWeightsError(
        f"{path} ({size:,} bytes) cannot be read as a PyTorch checkpoint: truncated or "
        f"damaged, or it holds objects other than tensors ({type(e).__name__}: "
        f"{str(e)[:300]}).") from e
  return state.get("state_dict", state) if isinstance(state, dict) else state


def read_file(path: str) -> dict[str, np.ndarray]:
  """name -> array from one weights file; a damaged file raises UnreadableWeightsError
  naming it."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No weights file {path}.")
  if path.endswith(".safetensors"):
    return _read_safetensors(path)
  if path.endswith((".ckpt", ".pt", ".pth", ".bin")):
    state = _torch_load(path)
    if not isinstance(state, dict):
      raise UnreadableWeightsError(f"{path} holds a {type(state).__name__}, not a state "
                                   f"dict of tensors.")
    return {k: torch_weights.to_numpy(v) for k, v in state.items() if hasattr(v, "shape")}
  raise ValueError(f"{path}: expected a .safetensors, .ckpt, .pt, .pth or .bin file.")


def read(source: str, subfolder: str | None = None) -> dict[str, np.ndarray]:
  """The state dict of a weights file or a diffusers folder (read once, for every part)."""
  if os.path.isdir(source):
    return read_folder(source, subfolder)[0]
  if subfolder:
    raise ValueError(f"subfolder={subfolder!r} is for a diffusers pipeline folder; {source} "
                     f"is a file.")
  return read_file(source)


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


def read_npz(path: str, what: str) -> dict[str, np.ndarray]:
  """name -> array from an .npz file of `what` (e.g. 'LPIPS weights'), read whole, without
  pickles; a file that is not one raises ValueError naming it."""
  try:
    data = np.load(path, allow_pickle=False)
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path} is not an .npz file of {what} ({e}).") from e
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ValueError(f"{path} holds a single array, not an .npz file of {what}.")
  with data:
    return {key: data[key] for key in data.files}
