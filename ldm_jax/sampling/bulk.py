"""Evaluation-sized sampling (50,000 images): batches streamed to disk, shared between
processes, resumable; the result one ADM-layout .npz.

  python sample.py --workdir=RUN --num_samples=50000 --stream --out=DIR
      [--process_index=i --process_count=n]

DIR holds `plan.json` (what is drawn: checkpoint, settings, seed, batch size, count),
`batches/<b>.npz` while drawing (each written whole, then renamed into place) and, once every
batch exists, `samples_<N>x<H>x<W>x<C>.npz`: `arr_0` the uint8 images and, for a
class-conditional model, `arr_1` the labels (ADM's sample batches; `python -m
ldm_jax.eval.fid` and ADM's evaluator read it). The batch files are removed after it is
written. Sample i is the same image however the work is split: its noise comes from
fold_in(seed, i) and batch b's from batch number b (sampler.py), so a run interrupted and
started again, or split over processes (process p draws batches p, p + n, ...), gives the
images one uninterrupted process would. Running the same command again resumes; a different
plan in the same DIR is refused, naming what differs.

Unconditional and class-conditional models only (labels spread evenly: sample i has class
i * K // N of the K classes asked for, all by default; with fewer samples than classes,
classes spaced evenly); the other modes need inputs per sample.
"""

import json
import os
import tempfile
import zipfile

import numpy as np

from ldm_jax.sampling import sampler as sampler_lib

_BATCHES = "batches"
_PLAN = "plan.json"


def labels_for(sampler: "sampler_lib.Sampler", num_samples: int,
               class_label=None) -> np.ndarray | None:
  """Per-sample labels of an evaluation set (None for an unconditional model)."""
  if sampler.mode == "none":
    if class_label is not None:
      raise ValueError("class_label was given, but the model is unconditional.")
    return None
  if sampler.mode != "class":
    raise ValueError(f"Evaluation-sized sampling draws unconditional and class-conditional "
                     f"models; this one is conditioned by {sampler.mode!r}, which needs an "
                     f"input per sample (use sample.py without --stream).")
  classes = list(range(sampler.num_classes)) if class_label is None else (
      [class_label] if np.ndim(class_label) == 0 else list(class_label))
  return np.asarray(classes, np.int32)[np.arange(num_samples) * len(classes) // num_samples]


def draw(model: "sampler_lib.Sampler", labels, num_samples: int, batch_size: int,
         numbers, /, *, seed: int, **settings):
  """Yields (b, uint8 images, labels or None) for each batch number b in `numbers`."""
  for b in numbers:
    start, stop = b * batch_size, min((b + 1) * batch_size, num_samples)
    part = None if labels is None else labels[start:stop]
    result = model.sample(stop - start, class_label=None if part is None else
                            [int(l) for l in part], seed=seed, batch_size=batch_size,
                            first_index=start, **settings)
    yield b, result.images, part


def _plan(sampler, num_samples, batch_size, seed, class_label, settings) -> dict:
  return dict(checkpoint=sampler.source, step=sampler.step, num_samples=int(num_samples),
              batch_size=int(batch_size), seed=int(seed), mode=sampler.mode,
              class_label=None if class_label is None else np.asarray(class_label).tolist(),
              **sampler.settings(**settings))


def _start(out: str, plan: dict) -> None:
  """Creates `out` with the plan, or checks an existing one against it."""
  path = os.path.join(out, _PLAN)
  if os.path.isfile(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != plan:
      diff = sorted(k for k in {*saved, *plan} if saved.get(k) != plan.get(k))
      raise ValueError(f"{out} holds another sampling run ({path}): " + "; ".join(
          f"{k}: there {saved.get(k)!r}, now {plan.get(k)!r}" for k in diff)
                       + ". Use a new --out, or the same settings to resume.")
    return
  # Another process may be starting the same folder: its batches/ and temporary files are
  # no reason to refuse.
  others = [f for f in (os.listdir(out) if os.path.isdir(out) else [])
            if f != _BATCHES and not f.endswith(".tmp")]
  if os.path.isfile(out) or others:
    raise FileExistsError(f"--out={out} exists and is not a sampling run of --stream (no "
                          f"{_PLAN}); samples are never written over. Choose a new directory.")
  os.makedirs(os.path.join(out, _BATCHES), exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=out, suffix=".tmp", delete=False) as f:
    json.dump(plan, f, indent=1)
  try:
    os.link(f.name, path)
  except FileExistsError:  # Another process started the same folder; check its plan.
    os.unlink(f.name)
    return _start(out, plan)
  os.unlink(f.name)


def _batch_path(out: str, b: int) -> str:
  return os.path.join(out, _BATCHES, f"{b:06d}.npz")


def result_path(out: str, num_samples: int, shape) -> str:
  return os.path.join(out, "samples_{}x{}x{}x{}.npz".format(num_samples, *shape))


def _write_member(archive: zipfile.ZipFile, name: str, shape, dtype, parts) -> None:
  """One .npy member of the archive, written from `parts` without holding them all."""
  header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
            "shape": tuple(shape)}
  with archive.open(name, "w", force_zip64=True) as member:
    try:  # Format 1.0 where the header fits, as numpy itself writes.
      np.lib.format.write_array_header_1_0(member, header)
    except ValueError:
      np.lib.format.write_array_header_2_0(member, header)
    for part in parts:
      member.write(np.ascontiguousarray(part, dtype).tobytes())


def _read(path: str, key: str) -> np.ndarray:
  with np.load(path) as data:
    return data[key]


def _finished(out: str, num_samples: int) -> str | None:
  done = [f for f in os.listdir(out) if f.startswith(f"samples_{num_samples}x")
          and f.endswith(".npz")]
  return os.path.join(out, done[0]) if done else None


def _merge(out: str, plan: dict, batches: int) -> str:
  with np.load(_batch_path(out, 0)) as first:
    shape, labelled = first["images"].shape[1:], "labels" in first.files
  path = result_path(out, plan["num_samples"], shape)
  reader = lambda key: (_read(_batch_path(out, b), key) for b in range(batches))
  with tempfile.NamedTemporaryFile(dir=out, suffix=".npz.tmp", delete=False) as f:
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
      _write_member(archive, "arr_0.npy", (plan["num_samples"], *shape), np.uint8,
                    reader("images"))
      if labelled:
        _write_member(archive, "arr_1.npy", (plan["num_samples"],), np.int64,
                      reader("labels"))
  try:
    os.link(f.name, path)
  finally:
    os.unlink(f.name)
  for b in range(batches):
    if os.path.exists(_batch_path(out, b)):
      os.unlink(_batch_path(out, b))
  return path


def write(out: str, model: "sampler_lib.Sampler", num_samples: int, /, *, seed: int = 0,
          batch_size: int | None = None, class_label=None, process_index: int = 0,
          process_count: int = 1, progress: bool = True, **settings) -> str | None:
  """Draws this process's missing batches into `out`. Process 0 then merges them, when all
  are there, and returns the result .npz; None from the others, or while batches of other
  processes are missing (process 0 run again, with nothing left to draw, merges)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index}: expected 0 .. {process_count - 1}.")
  if num_samples is None or num_samples < 1:
    raise ValueError(f"num_samples={num_samples}: --stream needs a positive number.")
  labels = labels_for(model, num_samples, class_label)
  batch_size = model.batch_size_for(batch_size, num_samples)
  out = os.path.abspath(os.path.expanduser(out))
  plan = _plan(model, num_samples, batch_size, seed, class_label, settings)
  _start(out, plan)
  if _finished(out, num_samples):
    return _finished(out, num_samples)
  total = -(-num_samples // batch_size)
  mine = [b for b in range(process_index, total, process_count)
          if not os.path.exists(_batch_path(out, b))]
  bar = None
  if progress:
    from tqdm import auto as tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm.tqdm(total=len(mine), unit="batch", desc=f"{num_samples} samples -> {out}")
  try:
    for b, images, part in draw(model, labels, num_samples, batch_size, mine, seed=seed,
                                **settings):
      arrays = dict(images=images) if part is None else dict(images=images, labels=part)
      with tempfile.NamedTemporaryFile(dir=os.path.join(out, _BATCHES), suffix=".tmp",
                                       delete=False) as f:
        np.savez(f, **arrays)
      os.replace(f.name, _batch_path(out, b))
      if bar is not None:
        bar.update(1)
  finally:
    if bar is not None:
      bar.close()
  if process_index == 0 and all(os.path.exists(_batch_path(out, b)) for b in range(total)):
    return _merge(out, plan, total)
  return None
