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
is 50,000 samples against the whole training split.
"""

import json
import os

from absl import app
from absl import flags
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
  """{metric: value, ..., 'mode', 'weights_sha256', 'num_samples', 'num_reference', ...}."""
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
  elif ref.kind == "adm" and keep_pool3 and ref.pool3 is None:  # Its images give them.
    ref.pool3 = references.measure(image_sets.open_images(reference), extractor, sha,
                                   keep_pool3=True, progress=progress).pool3
  result.update(compare(ours, ref, metrics, fid_method=fid_method, isc_splits=isc_splits,
                        kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                        explicit=explicit))
  if skipped:
    result["not_computed"] = {**skipped, **result.get("not_computed", {})}
  if save_stats:
    references.save(save_stats, ours, source=samples)
  return result


_SAMPLES = flags.DEFINE_string("samples", None, "Folder, .npz of images or statistics, or a "
                               "training run's workdir (with --num_samples).")
_REFERENCE = flags.DEFINE_string("reference", None, "Folder, .npz of images or statistics, "
                                 "or tfds:NAME (with --split, --image_size).")
_WEIGHTS = flags.DEFINE_string("weights", None, "Inception .npz (ldm_jax.eval.inception_convert).")
_MODE = flags.DEFINE_enum("mode", "tf1", inception.MODES, "Inputs as torch-fidelity/ADM "
                          "(tf1, the papers') or as pytorch-fid.")
_METRICS = flags.DEFINE_list("metrics", None, f"Some of {METRICS} (default: all the sides "
                             "allow).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per step (over all devices).")
_KID_SUBSETS = flags.DEFINE_integer("kid_subsets", 100, "KID: random subsets.")
_KID_SIZE = flags.DEFINE_integer("kid_subset_size", 1000, "KID: images per subset.")
_FID_METHOD = flags.DEFINE_enum("fid_method", "sqrtm", generative.FID_METHODS,
                                "sqrtm: pytorch-fid's (and the LDM paper's torch-fidelity "
                                "0.3.0); eigvals: torch-fidelity 0.4.0's, for small sets.")
_SPLIT = flags.DEFINE_string("split", "train", "tfds: reference split (the papers': train).")
_SIZE = flags.DEFINE_integer("image_size", None, "tfds: reference side (default: the "
                             "samples').")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds: prepared datasets' folder.")
_RESIZE = flags.DEFINE_string("resize_method", "bicubic", "tfds: as the run's "
                              "data.resize_method.")
_SMALL = flags.DEFINE_string("small_images", "error", "tfds: as the run's data.small_images.")
_CACHE = flags.DEFINE_string("cache_dir", references.DEFAULT_CACHE, "tfds: statistics cache "
                             "('' for none).")
_REF_MODE = flags.DEFINE_enum("reference_mode", None, inception.MODES, "The mode of a foreign "
                              "statistics file made otherwise than its kind's usual way.")
_NUM = flags.DEFINE_integer("num_samples", None, "Samples to draw from --samples=<run>.")
_SEED = flags.DEFINE_integer("seed", 0, "Their seed.")
_SAVE = flags.DEFINE_string("save_stats", None, "New .npz for the samples' statistics "
                            "(ADM's keys mu, sigma, mu_s, sigma_s; pool3 when kept).")
_OUT = flags.DEFINE_string("out", None, "New JSON file for the results.")
flags.mark_flags_as_required(["samples", "reference", "weights", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  if os.path.exists(_OUT.value):
    raise FileExistsError(f"--out={_OUT.value} exists; results are never written over.")
  result = compute(
      _SAMPLES.value, _REFERENCE.value, _WEIGHTS.value, mode=_MODE.value,
      metrics=None if _METRICS.value is None else tuple(_METRICS.value),
      batch_size=_BATCH.value, kid_subsets=_KID_SUBSETS.value,
      kid_subset_size=_KID_SIZE.value, fid_method=_FID_METHOD.value, split=_SPLIT.value,
      image_size=_SIZE.value, data_dir=_DATA_DIR.value, resize_method=_RESIZE.value,
      small_images=_SMALL.value, reference_mode=_REF_MODE.value, cache_dir=_CACHE.value,
      num_samples=_NUM.value, seed=_SEED.value, save_stats=_SAVE.value, progress=True)
  result.update(samples=_SAMPLES.value, reference=_REFERENCE.value)
  with open(_OUT.value, "x") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
