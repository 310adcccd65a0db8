"""Look at what the input pipeline feeds the model: a PNG grid and a printed summary."""

import collections
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from ldm_jax import visualize
from ldm_jax.data import pipeline
from ldm_jax.parallel import sharding


def summarize(config: ml_collections.ConfigDict, *, num_batches: int = 1,
              train: bool = True) -> tuple[dict[str, Any], np.ndarray]:
  """Reads `num_batches` global batches; returns (report, images of the first batch)."""
  if num_batches < 1:
    raise ValueError(f"num_batches={num_batches}: expected at least 1.")
  mesh = sharding.create_mesh(config.mesh)
  iterator = pipeline.create_iterator(config.data, seed=config.seed, mesh=mesh, train=train)
  split = iterator.spec["split"]
  batches = [{k: np.asarray(v) for k, v in next(iterator).items()}
             for _ in range(num_batches)]
  images = np.concatenate([b["image"] for b in batches])
  report = {
      "dataset": config.data.name,
      "split": split,
      "split_examples": iterator.info.splits[split].num_examples,
      "batches_read": num_batches,
      "shapes": {k: f"{v.dtype}{list(v.shape)}" for k, v in batches[0].items()},
      "image_range": [float(images.min()), float(images.max())],
      "image_mean": float(images.mean()),
  }
  if "label" in batches[0]:
    labels = np.concatenate([b["label"] for b in batches])
    feature = iterator.info.features[config.data.label_key]
    name = feature.int2str if isinstance(feature, tfds.features.ClassLabel) else str
    counts = collections.Counter(labels.tolist())
    report["label_counts"] = {name(k): counts[k] for k in sorted(counts)}
  if "caption" in batches[0]:
    report["captions"] = [c.decode("utf-8") for c in batches[0]["caption"][:4]]
  return report, batches[0]["image"]


def write_grid(images: np.ndarray, path: str, min_pixels: int = 512) -> None:
  grid = visualize.make_grid(images)
  scale = max(1, -(-min_pixels // max(grid.shape[:2])))
  visualize.save_png(grid, path, scale=scale)


def format_report(report: dict[str, Any]) -> str:
  lines = [f"dataset {report['dataset']!r}, split {report['split']!r}: "
           f"{report['split_examples']} examples; read {report['batches_read']} batch(es)"]
  lines += [f"  {k}: {v}" for k, v in report["shapes"].items()]
  low, high = report["image_range"]
  lines.append(f"  image values in [{low:.3f}, {high:.3f}], mean {report['image_mean']:.3f}")
  if "label_counts" in report:
    lines.append("  label counts: " + ", ".join(
        f"{k}={v}" for k, v in report["label_counts"].items()))
  if "captions" in report:
    lines.append("  captions: " + " | ".join(report["captions"]))
  return "\n".join(lines)
