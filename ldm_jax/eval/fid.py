"""FID, sFID, IS, KID and precision/recall of a sample set against a reference set.

  python -m ldm_jax.eval.fid --samples=DIR_OR_NPZ --reference=DIR_OR_NPZ \
      --weights=inception_fid.npz [--mode=tf1] --out=result.json

Sets are folders of images or .npz files of uint8 images (ldm_jax/eval/image_sets.py). The
Inception weights come from `python -m ldm_jax.eval.inception_convert`. The result names the
input mode and the weights' sha256 with every number; IS is of the samples; precision is the
share of samples on the reference manifold, recall the reverse (k = 3). The defaults follow
torch-fidelity (IS: 10 splits; KID: 100 subsets of 1,000; seed 2020) and ADM's evaluator
(precision/recall on pool3); the paper's protocol is 50,000 samples against the whole
training split.
"""

import json
import os

from absl import app
from absl import flags

from ldm_jax.eval import features as features_lib
from ldm_jax.eval import image_sets
from ldm_jax.metrics import generative
from ldm_jax.metrics import inception

METRICS = ("fid", "sfid", "isc", "kid", "prc")


def compute(samples: str, reference: str, weights: str, *, mode: str = "tf1",
            metrics=METRICS, batch_size: int = 64, kid_subsets: int = 100,
            kid_subset_size: int = 1000, isc_splits: int = 10, fid_method: str = "sqrtm",
            devices=None) -> dict:
  """{metric: value, ..., 'mode', 'weights_sha256', 'num_samples', 'num_reference'}."""
  unknown = sorted(set(metrics) - set(METRICS))
  if unknown:
    raise ValueError(f"metrics={unknown}: expected some of {METRICS}.")
  if fid_method not in generative.FID_METHODS:
    raise ValueError(f"fid_method={fid_method!r}: expected one of {generative.FID_METHODS}.")
  sample_set, reference_set = image_sets.open_images(samples), image_sets.open_images(reference)
  params, info = inception.load_params(weights)
  extractor = features_lib.Extractor(params, mode, devices, batch_size)
  keep = dict(keep_pool3="kid" in metrics or "prc" in metrics)
  ours = features_lib.extract(sample_set, extractor, keep_logits="isc" in metrics, **keep)
  ref = features_lib.extract(reference_set, extractor, **keep)
  result = {"mode": mode, "fid_method": fid_method, "weights_sha256": info["source_sha256"],
            "weights_name_hash_match": info["name_hash_match"], "num_samples": ours.count,
            "num_reference": ref.count}
  if "fid" in metrics:
    result["fid"] = generative.frechet_distance(*ours.pool3.mean_and_covariance(),
                                                *ref.pool3.mean_and_covariance(),
                                                method=fid_method)
  if "sfid" in metrics:
    result["sfid"] = generative.frechet_distance(*ours.spatial.mean_and_covariance(),
                                                 *ref.spatial.mean_and_covariance(),
                                                 method=fid_method)
  if "isc" in metrics:
    result["isc_mean"], result["isc_std"] = generative.inception_score(ours.logits, isc_splits)
  if "kid" in metrics:
    result["kid_mean"], result["kid_std"] = generative.kernel_distance(
        ours.pool3_all, ref.pool3_all, subsets=kid_subsets, subset_size=kid_subset_size)
  if "prc" in metrics:
    result["precision"], result["recall"] = generative.precision_recall(ours.pool3_all,
                                                                        ref.pool3_all)
  return result


_SAMPLES = flags.DEFINE_string("samples", None, "Folder or .npz of the generated images.")
_REFERENCE = flags.DEFINE_string("reference", None, "Folder or .npz of the reference images.")
_WEIGHTS = flags.DEFINE_string("weights", None, "Inception .npz (ldm_jax.eval.inception_convert).")
_MODE = flags.DEFINE_enum("mode", "tf1", inception.MODES, "Inputs as torch-fidelity/ADM "
                          "(tf1, the papers') or as pytorch-fid.")
_METRICS = flags.DEFINE_list("metrics", list(METRICS), f"Some of {METRICS}.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per step (over all devices).")
_KID_SUBSETS = flags.DEFINE_integer("kid_subsets", 100, "KID: random subsets.")
_KID_SIZE = flags.DEFINE_integer("kid_subset_size", 1000, "KID: images per subset.")
_FID_METHOD = flags.DEFINE_enum("fid_method", "sqrtm", generative.FID_METHODS,
                                "sqrtm: pytorch-fid's (and the LDM paper's torch-fidelity "
                                "0.3.0); eigvals: torch-fidelity 0.4.0's, for small sets.")
_OUT = flags.DEFINE_string("out", None, "New JSON file for the results.")
flags.mark_flags_as_required(["samples", "reference", "weights", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  if os.path.exists(_OUT.value):
    raise FileExistsError(f"--out={_OUT.value} exists; results are never written over.")
  result = compute(_SAMPLES.value, _REFERENCE.value, _WEIGHTS.value, mode=_MODE.value,
                   metrics=tuple(_METRICS.value), batch_size=_BATCH.value,
                   kid_subsets=_KID_SUBSETS.value, kid_subset_size=_KID_SIZE.value,
                   fid_method=_FID_METHOD.value)
  result.update(samples=_SAMPLES.value, reference=_REFERENCE.value)
  with open(_OUT.value, "x") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main)
