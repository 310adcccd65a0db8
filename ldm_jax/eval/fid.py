"""FID, sFID, IS, KID and precision/recall of a sample set against a reference.

  python -m ldm_jax.eval.fid --samples=SAMPLES --reference=REFERENCE \
      --weights=inception_fid.npz [--mode=tf1] --out=result.json

SAMPLES: a folder of images, an .npz of uint8 images (sample.py's samples.npz, `sample.py
--stream`'s or ADM's samples_*.npz), a statistics .npz, or a training run's workdir (its EMA
model draws --num_samples itself, as `sample.py --stream` would).
REFERENCE: a folder, an .npz of images, a statistics .npz (ours, pytorch-fid's, an ADM
reference batch: ldm_jax/eval/references.py), or `tfds:NAME` (--split, default 'train': the
images as the evaluation pipeline preprocesses them at --image_size, quantised to uint8; its
statistics are cached in --cache_dir under dataset, split, preprocessing, mode and weights).

The Inception weights come from `python -m ldm_jax.eval.inception_convert`. The result names
the input mode and the weights' sha256 with every number; IS is of the samples; precision is
the share of samples on the reference manifold, recall the reverse (k = 3). The defaults
follow torch-fidelity (IS: 10 splits; KID: 100 subsets of 1,000; seed 2020) and ADM's
evaluator (precision/recall on pool3). Without --metrics, every metric the two sides allow
is computed (a statistics file has no per-image features for IS, KID or precision/recall
unless it kept them) and the others are listed under `not_computed`. The papers' protocol
is 50,000 samples against the whole training split. Run on several JAX processes
(jax.distributed), each reads and extracts its part of every set (a run's samples drawn in
parts); process 0 computes the metrics and writes the files.
"""

import json
import os

from absl import app
from absl import flags
import jax
import ml_collections

from ldm_jax.eval import features as features_lib
from ldm_jax.eval import image_sets
from ldm_jax.eval import references
from ldm_jax.metrics import generative
from ldm_jax.metrics import inception

METRICS = ("fid", "sfid", "isc", "kid", "prc")
TFDS_PREFIX = "tfds:"


def tfds_data_config(name: str, image_size: int, *, data_dir=None, resize_method="bicubic",
                     small_images="error", image_key="image") -> ml_collections.ConfigDict:
  """The `data` block the evaluation pipeline needs to read a TFDS reference."""
  return ml_collections.ConfigDict(dict(
      name=name, data_dir=data_dir, folder=None, image_key=image_key, label_key=None,
      caption_key=None, cond_image_keys=(), label_map_keys=(), latent_key=None,
      image_size=int(image_size), crop="center", random_flip=False,
      resize_method=resize_method, small_images=small_images, channels=None,
      degradation=None, degradation_factor=4, batch_size=64, shuffle_buffer=1))


def data_key(data_config, split: str) -> dict:
  """What decides a TFDS reference's images (the cache key's data part)."""
  return dict(dataset=data_config.name, split=split, image_size=int(data_config.image_size),
              image_key=data_config.image_key, resize_method=data_config.resize_method,
              small_images=data_config.small_images, channels=data_config.channels,
              folder=os.path.abspath(data_config.folder) if data_config.get("folder") else None,
              crop="center", quantised="visualize.to_uint8")


def _open(spec: str, role: str, *, num_samples=None, seed=0, batch_size=None,
          sampling=None, declared_mode=None):
  """An ImageSet or a references.Statistics for `spec`; nothing extracted yet."""
  if os.path.isdir(os.path.join(spec, "checkpoints")):
    if role != "samples":
      raise ValueError(f"--reference={spec} is a training run; runs draw samples, and the "
                       f"reference is real data.")
    if not num_samples:
      raise ValueError(f"--samples={spec} is a training run: give --num_samples to draw.")
    from ldm_jax.sampling import sampler as sampler_lib  # pylint: disable=import-outside-toplevel
    return image_sets.from_sampler(sampler_lib.load(spec), num_samples, seed=seed,
                                   batch_size=batch_size, **(sampling or {}))
  if num_samples:
    raise ValueError(f"--num_samples={num_samples} is for --samples=<a training run>; "
                     f"{spec} is not one.")
  if references.is_statistics_file(spec):
    return references.load(spec, declared_mode=declared_mode)
  return image_sets.open_images(spec)


def _needs(side, metric: str) -> str | None:
  """Why `side` cannot serve `metric` (None: it can)."""
  if isinstance(side, image_sets.ImageSet):
    return None
  if metric == "sfid" and side.mu_s is None:
    return f"{side.name} has no spatial statistics (mu_s, sigma_s)"
  if metric == "isc":
    return f"{side.name} is a statistics file: IS needs the samples' images"
  if metric in ("kid", "prc") and side.pool3 is None and side.kind != "adm":
    return f"{side.name} kept no per-image pool3 features"
  return None


def compare(ours: references.Statistics, ref: references.Statistics, metrics, *,
            fid_method: str = "sqrtm", isc_splits: int = 10, kid_subsets: int = 100,
            kid_subset_size: int = 1000, explicit: bool = True) -> dict:
  """The metrics of two sides' statistics (checked comparable). KID on fewer samples than a
  subset is an error when asked for (`explicit`), else listed under `not_computed`."""
  references.check_comparable(ours, ref)
  result = dict(num_samples=ours.count, num_reference=ref.count, reference_kind=ref.kind)
  if "fid" in metrics:
    result["fid"] = generative.frechet_distance(ours.mu, ours.sigma, ref.mu, ref.sigma,
                                                method=fid_method)
  if "sfid" in metrics:
    result["sfid"] = generative.frechet_distance(ours.mu_s, ours.sigma_s, ref.mu_s,
                                                 ref.sigma_s, method=fid_method)
  if "isc" in metrics:
    result["isc_mean"], result["isc_std"] = generative.inception_score(ours.logits, isc_splits)
  if "kid" in metrics:
    fewest = min(len(ours.pool3), len(ref.pool3))
    if fewest < kid_subset_size and not explicit:
      result["not_computed"] = {"kid": (
          f"subsets of {kid_subset_size} (kid_subset_size) need as many samples on each "
          f"side; there are {len(ours.pool3)} and {len(ref.pool3)}")}
    else:
      result["kid_mean"], result["kid_std"] = generative.kernel_distance(
          ours.pool3, ref.pool3, subsets=kid_subsets, subset_size=kid_subset_size)
  if "prc" in metrics:
    result["precision"], result["recall"] = generative.precision_recall(ours.pool3, ref.pool3)
  return result


def compute(samples: str, reference: str, weights: str, *, mode: str = "tf1", metrics=None,
            batch_size: int = 64, kid_subsets: int = 100, kid_subset_size: int = 1000,
            isc_splits: int = 10, fid_method: str = "sqrtm", devices=None,
            split: str = "train", image_size: int | None = None, data_dir=None,
            resize_method: str = "bicubic", small_images: str = "error",
            reference_mode: str | None = None, cache_dir=references.DEFAULT_CACHE,
            num_samples: int | None = None, seed: int = 0, sampling: dict | None = None,
            save_stats: str | None = None, progress: bool = False) -> dict:
  """{metric: value, ..., 'mode', 'weights_sha256', 'num_samples', 'num_reference', ...}
  (the metrics on process 0 only)."""
  explicit = metrics is not None
  metrics = tuple(METRICS if metrics is None else metrics)
  unknown = sorted(set(metrics) - set(METRICS))
  if unknown:
    raise ValueError(f"metrics={unknown}: expected some of {METRICS}.")
  if fid_method not in generative.FID_METHODS:
    raise ValueError(f"fid_method={fid_method!r}: expected one of {generative.FID_METHODS}.")
  if mode not in inception.MODES:
    raise ValueError(f"mode={mode!r}: expected one of {inception.MODES}.")
  if save_stats and os.path.exists(save_stats):
    raise FileExistsError(f"--save_stats={save_stats} exists; statistics are never written "
                          f"over.")
  # Both sides opened (cheap) and their modes checked before any weights or compilation.
  ours = _open(samples, "samples", num_samples=num_samples, seed=seed, batch_size=batch_size,
               sampling=sampling, declared_mode=reference_mode)
  data_config = None
  if reference.startswith(TFDS_PREFIX):
    size = image_size or (ours.height if isinstance(ours, image_sets.ImageSet) else None)
    if not size:
      raise ValueError("--reference=tfds:...: give --image_size (the samples are statistics).")
    data_config = tfds_data_config(reference[len(TFDS_PREFIX):], size, data_dir=data_dir,
                                   resize_method=resize_method, small_images=small_images)
    ref = image_sets.from_data(data_config, split)
  else:
    ref = _open(reference, "reference", declared_mode=reference_mode)
  for side in (ours, ref):
    if isinstance(side, references.Statistics):
      references.check_mode(side, mode)
  skipped = {}
  for metric in metrics:
    reason = _needs(ours, metric) or (None if metric == "isc" else _needs(ref, metric))
    if reason and explicit:
      raise ValueError(f"metrics: {metric} cannot be computed: {reason}.")
    if reason:
      skipped[metric] = reason
  metrics = tuple(m for m in metrics if m not in skipped)

  params, info = inception.load_params(weights)
  sha = info["source_sha256"]
  extractor = features_lib.Extractor(params, mode, devices, batch_size)
  keep_pool3 = "kid" in metrics or "prc" in metrics
  result = {"mode": mode, "fid_method": fid_method, "weights_sha256": sha,
            "weights_name_hash_match": info["name_hash_match"]}
  if isinstance(ours, image_sets.ImageSet):
    ours = references.measure(ours, extractor, sha, keep_pool3=keep_pool3,
                              keep_logits="isc" in metrics, progress=progress)
  if data_config is not None:
    ref, result["reference_cache"] = references.cached(
        ref, data_key(data_config, split), extractor, sha, cache_dir=cache_dir,
        keep_pool3=keep_pool3, progress=progress)
  elif isinstance(ref, image_sets.ImageSet):
    ref = references.measure(ref, extractor, sha, keep_pool3=keep_pool3, progress=progress)
  for side, path in ((ours, samples), (ref, reference)):
    if side.kind == "adm" and keep_pool3 and side.pool3 is None:  # Its images give them.
      side.pool3 = references.measure(image_sets.open_images(path), extractor, sha,
                                      keep_pool3=True, progress=progress).pool3
  if jax.process_index() > 0:  # Every process took part in the extraction; 0 measures.
    return result
  result.update(compare(ours, ref, metrics, fid_method=fid_method, isc_splits=isc_splits,
                        kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                        explicit=explicit))
  if skipped:
    result["not_computed"] = {**skipped, **result.get("not_computed", {})}
  if save_stats:
    references.save(save_stats, ours, source=samples)
  return result


def _define_flags() -> dict:
  """The command's flags, defined only when it runs (importing this module as a library, as
  training's evaluators do, must not add required flags to the importer's command line)."""
  f = {}
  f["samples"] = flags.DEFINE_string("samples", None, "Folder, .npz of images or statistics, "
                                     "or a training run's workdir (with --num_samples).")
  f["reference"] = flags.DEFINE_string("reference", None, "Folder, .npz of images or "
                                       "statistics, or tfds:NAME (with --split, --image_size).")
  f["weights"] = flags.DEFINE_string("weights", None, "Inception .npz "
                                     "(ldm_jax.eval.inception_convert).")
  f["mode"] = flags.DEFINE_enum("mode", "tf1", inception.MODES, "Inputs as torch-fidelity/ADM "
                                "(tf1, the papers') or as pytorch-fid.")
  f["metrics"] = flags.DEFINE_list("metrics", None, f"Some of {METRICS} (default: all the "
                                   "sides allow).")
  f["batch_size"] = flags.DEFINE_integer("batch_size", 64, "Images per step (over all "
                                         "devices).")
  f["kid_subsets"] = flags.DEFINE_integer("kid_subsets", 100, "KID: random subsets.")
  f["kid_subset_size"] = flags.DEFINE_integer("kid_subset_size", 1000, "KID: images per "
                                              "subset.")
  f["fid_method"] = flags.DEFINE_enum(
      "fid_method", "sqrtm", generative.FID_METHODS, "sqrtm: pytorch-fid's (and the LDM "
      "paper's torch-fidelity 0.3.0); eigvals: torch-fidelity 0.4.0's, for small sets.")
  f["split"] = flags.DEFINE_string("split", "train", "tfds: reference split (the papers': "
                                   "train).")
  f["image_size"] = flags.DEFINE_integer("image_size", None, "tfds: reference side (default: "
                                         "the samples').")
  f["data_dir"] = flags.DEFINE_string("data_dir", None, "tfds: prepared datasets' folder.")
  f["resize_method"] = flags.DEFINE_string("resize_method", "bicubic", "tfds: as the run's "
                                           "data.resize_method.")
  f["small_images"] = flags.DEFINE_string("small_images", "error", "tfds: as the run's "
                                          "data.small_images.")
  f["cache_dir"] = flags.DEFINE_string("cache_dir", references.DEFAULT_CACHE, "tfds: "
                                       "statistics cache ('' for none).")
  f["reference_mode"] = flags.DEFINE_enum(
      "reference_mode", None, inception.MODES, "The mode of a foreign statistics file made "
      "otherwise than its kind's usual way.")
  f["num_samples"] = flags.DEFINE_integer("num_samples", None, "Samples to draw from "
                                          "--samples=<run>.")
  f["seed"] = flags.DEFINE_integer("seed", 0, "Their seed.")
  f["save_stats"] = flags.DEFINE_string("save_stats", None, "New .npz for the samples' "
                                        "statistics (ADM's keys mu, sigma, mu_s, sigma_s; "
                                        "pool3 when kept).")
  f["out"] = flags.DEFINE_string("out", None, "New JSON file for the results.")
  flags.mark_flags_as_required(["samples", "reference", "weights", "out"])
  return f


def main(argv, given: dict) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  v = {k: holder.value for k, holder in given.items()}
  if os.path.exists(v["out"]):
    raise FileExistsError(f"--out={v['out']} exists; results are never written over.")
  samples, reference, weights, out = (v.pop(k) for k in ("samples", "reference", "weights",
                                                          "out"))
  if v["metrics"] is not None:
    v["metrics"] = tuple(v["metrics"])
  result = compute(samples, reference, weights, progress=True, **v)
  result.update(samples=samples, reference=reference)
  if jax.process_index() > 0:
    return
  with open(out, "x") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  _given = _define_flags()
  app.run(lambda argv: main(argv, _given))
