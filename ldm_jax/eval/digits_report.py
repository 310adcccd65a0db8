"""The quickstart's last step: sample a trained digits LDM, write a grid, print a report.

  python -m ldm_jax.eval.digits_report --workdir=out/quickstart/ldm \
      --out=out/quickstart/samples.png

Draws `--samples_per_class` samples of every digit (captions for a caption-conditional run),
writes one grid row per class, trains the digits classifier (ldm_jax/eval/digits.py) and
prints its test accuracy, the accuracy of the samples and Fréchet distances; the numbers
also go to `<out>.json`.
"""

import functools
import json
import os
import time

import jax
import numpy as np
from absl import app
from absl import flags

from ldm_jax import visualize
from ldm_jax.data import pipeline
from ldm_jax.data import sources
from ldm_jax.data.builders import digits as digits_builder
from ldm_jax.eval import digits
from ldm_jax.ldm import run

_WORKDIR = flags.DEFINE_string("workdir", None, "The LDM run's workdir.")
_OUT = flags.DEFINE_string("out", None, "PNG path for the grid (one row per class).")
_PER_CLASS = flags.DEFINE_integer("samples_per_class", 100, "Samples drawn per digit.")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "None: the run's sampling config.")
_STEPS = flags.DEFINE_integer("steps", 50, "Sampler steps.")
_SAMPLER = flags.DEFINE_string("sampler", "ddim", "ddim, ddpm, plms or dpm_solver++.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["workdir", "out"])


def load_split(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """All images (as the LDM saw them, center crop) and labels of a digits split."""
  builder = sources.load_builder(data_config)
  data = data_config.copy_and_resolve_references()
  with data.unlocked():
    data.label_key = "label"
    data.caption_key = None
  ds = pipeline.create_dataset(data, builder=builder, split=split, train=False, seed=0,
                               batch_size=256, process_index=0, process_count=1)
  images, labels = [], []
  for batch in ds.as_numpy_iterator():
    keep = batch["mask"].astype(bool)
    images.append(batch["image"][keep])
    labels.append(batch["label"][keep])
  return np.concatenate(images), np.concatenate(labels)


def draw(model, params, labels: np.ndarray, key, sampling, chunk: int = 250) -> np.ndarray:
  """Samples for `labels` (class-, caption- or un-conditional, as the run was trained),
  drawn with `sampling` (the run's config.sampling block, overridden by the flags)."""
  mode = model.cond.type
  if mode not in ("class", "text", "none"):
    raise ValueError(f"conditioning.type={mode!r}: the digits report needs a class-, "
                     f"caption- or un-conditional run.")

  @functools.partial(jax.jit, static_argnums=3)
  def sample(params, fs_params, fields, count, key):
    return model.sample_with(params, fs_params, fields, key, count, sampling)

  out = []
  for i in range(0, len(labels), chunk):
    part = labels[i:i + chunk]
    if mode == "class":
      fields = {"label": part.astype(np.int32)}
    elif mode == "text":
      fields = {"tokens": model.cond.tokenize(
          [digits_builder.caption_for(int(l)) for l in part])}
    else:
      fields = {}
    out.append(np.asarray(sample(params, model.first_stage_params, fields, len(part),
                                 jax.random.fold_in(key, i))))
  return np.concatenate(out)


def main(argv):
  del argv
  start = time.time()
  overrides = {"sampling.steps": _STEPS.value, "sampling.sampler": _SAMPLER.value}
  if _GUIDANCE.value is not None:
    overrides["sampling.guidance_scale"] = _GUIDANCE.value
  model, params, config, step = run.load_run(_WORKDIR.value, overrides=overrides)
  if config.data.name != "digits":
    raise app.UsageError(f"{_WORKDIR.value} trained on {config.data.name!r}, not digits.")
  train_images, train_labels = load_split(config.data, config.data.train_split)
  test_images, test_labels = load_split(config.data, config.data.eval_split)
  classifier = digits.train_classifier(train_images, train_labels, test_images, test_labels,
                                       seed=_SEED.value)
  labels = np.repeat(np.arange(10, dtype=np.int32), _PER_CLASS.value)
  samples = draw(model, params, labels, jax.random.key(_SEED.value), config.sampling)
  shown = samples.reshape((10, _PER_CLASS.value) + samples.shape[1:])[:, :10]
  grid = visualize.make_grid(shown.reshape((-1,) + samples.shape[1:]), columns=shown.shape[1])
  visualize.save_png(grid, _OUT.value, scale=4)
  results = digits.report(classifier, samples, labels, train_images, test_images,
                          seed=_SEED.value)
  if model.cond.type == "none":
    results.pop("sample_accuracy")
  results.update(step=step, sampler=config.sampling.sampler, steps=config.sampling.steps,
                 guidance_scale=config.sampling.guidance_scale,
                 seconds=round(time.time() - start, 1))
  with open(os.path.splitext(_OUT.value)[0] + ".json", "w") as f:
    json.dump(results, f, indent=1)
  print(f"\nDigits LDM report ({_WORKDIR.value}, step {step}; {results['num_samples']} samples,"
        f" {config.sampling.sampler} {config.sampling.steps} steps, guidance "
        f"{config.sampling.guidance_scale}):")
  print(f"  classifier accuracy on the real test split: {results['classifier_test_accuracy']:.1%}")
  if "sample_accuracy" in results:
    print(f"  classifier accuracy on the samples:         {results['sample_accuracy']:.1%}")
  print(f"  Fréchet distance, samples vs test:  {results['frechet_samples_vs_test']:.2f}")
  print(f"  Fréchet distance, train vs test (floor): {results['frechet_train_vs_test']:.2f}")
  print(f"  Fréchet distance, noise vs test:    {results['frechet_noise_vs_test']:.2f}")
  print(f"  grid (one row per digit): {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
