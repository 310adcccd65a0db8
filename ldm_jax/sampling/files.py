"""Files in and out of sampling (sample.py): condition images from PNG/JPEG or .npy, and a
new output directory with one PNG per sample, `grid.png`, `samples.npz` and `settings.json`.

Nothing is written over: the output directory must be new or empty, and it is checked before
the model is loaded or compiled.
"""

import json
import os

import numpy as np
from PIL import Image

from ldm_jax import visualize
from ldm_jax.sampling import bulk
from ldm_jax.sampling import sampler as sampler_lib


def check_out(directory: str) -> str:
  """The absolute output directory; refuses one that exists and is not empty."""
  directory = os.path.abspath(os.path.expanduser(directory))
  if os.path.isfile(directory) or (os.path.isdir(directory) and os.listdir(directory)):
    raise FileExistsError(f"--out={directory} exists and is not empty; samples are never "
                          f"written over earlier ones. Choose a new directory.")
  return directory


def read_image(path: str, channels: int | None = None) -> np.ndarray:
  """uint8 [H, W, C] from an image file (converted to `channels`: 1 gray, 3 RGB) or the
  array of a .npy file as stored ([K, ...] for several conditions)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file.")
  if path.endswith(".npy"):
    return np.load(path)
  with Image.open(path) as picture:
    if channels is not None:
      picture = picture.convert("L" if channels == 1 else "RGB")
    array = np.asarray(picture)
  return array[..., None] if array.ndim == 2 else array


def read_label_map(path: str) -> np.ndarray:
  """Integer [H, W] map: a palette or gray PNG's indices, or a .npy array."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file.")
  if path.endswith(".npy"):
    return np.load(path)
  with Image.open(path) as picture:
    if picture.mode not in ("L", "P", "I", "I;16"):
      raise ValueError(f"{path}: a {picture.mode} image; a semantic map is a single-channel "
                       f"(gray or palette) PNG of class ids, or a .npy array.")
    return np.asarray(picture).astype(np.int64)


def write(directory: str, result: "sampler_lib.Samples", extra: dict | None = None) -> None:
  """`directory`/00000.png ..., grid.png, samples.npz (images, conditions), settings.json."""
  directory = check_out(directory)
  os.makedirs(directory, exist_ok=True)
  for i, image in enumerate(result.images):
    visualize.save_png(image, os.path.join(directory, f"{i:05d}.png"))
  visualize.save_png(result.grid(), os.path.join(directory, "grid.png"))
  conditions = np.asarray(["" if c is None else c for c in result.conditions])
  np.savez(os.path.join(directory, "samples.npz"), images=result.images,
           conditions=conditions)
  with open(os.path.join(directory, "settings.json"), "w") as f:
    json.dump({**result.settings, **(extra or {}), "conditions": result.conditions}, f,
              indent=1)


def run(*, out: str, workdir=None, checkpoint=None, step=None, use_ema=True, num_samples=None,
        class_label=None, prompt=None, cond_image=None, image=None, mask=None,
        semantic_map=None, progress=True, **sample_kw) -> "sampler_lib.Samples":
  """sample.py: load, read the condition files, sample, write `out`."""
  out = check_out(out)
  model = sampler_lib.load(workdir, checkpoint=checkpoint, step=step, use_ema=use_ema)
  channels = model.input_channels
  given = dict(cond_image=cond_image, image=image, mask=mask, semantic_map=semantic_map)
  arrays = {}
  for name, path in given.items():
    if path is None:
      continue
    if name == "semantic_map":
      arrays[name] = read_label_map(path)
    else:
      arrays[name] = read_image(path, 1 if name == "mask" else channels)
  result = model.sample(num_samples, class_label=class_label, prompt=prompt,
                        progress=progress, **arrays, **sample_kw)
  write(out, result, {"inputs": {k: os.path.abspath(v) for k, v in given.items() if v}})
  return result


def run_stream(*, out: str, workdir=None, checkpoint=None, step=None, use_ema=True,
               num_samples=None, class_label=None, process_index=None, process_count=None,
               progress=True, **sample_kw) -> str | None:
  """sample.py --stream: evaluation-sized sampling into `out` (ldm_jax/sampling/bulk.py).
  With several JAX processes (jax.distributed), they meet when done and process 0 merges."""
  import jax  # pylint: disable=import-outside-toplevel
  distributed = process_index is None and process_count is None and jax.process_count() > 1
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  model = sampler_lib.load(workdir, checkpoint=checkpoint, step=step, use_ema=use_ema)
  write = lambda: bulk.write(out, model, num_samples, class_label=class_label,
                             process_index=process_index, process_count=process_count,
                             progress=progress, **sample_kw)
  path = write()
  if distributed:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("ldm_jax sample.py --stream: batches drawn")
    if process_index == 0:
      path = write()  # Nothing left to draw: merges.
  return path
