"""The two sides the sample-quality metrics compare, as Inception statistics, and the files
they are kept in.

A side is an image set (ldm_jax/eval/image_sets.py, its features extracted here) or a
statistics .npz:
- ours (`save`, `--save_stats`, the cache): `mu`, `sigma`, `mu_s`, `sigma_s` (the keys ADM's
  evaluator reads from a reference batch, so it can use the file), `pool3` [N, 2048] when
  kept (KID, precision/recall), and `ldm_jax`, a JSON string: input mode, weights sha256,
  count, source;
- pytorch-fid's (`--save-stats`: `mu`, `sigma`): made with pytorch-fid's inputs, mode
  `pytorch_fid`;
- ADM's reference batches (`arr_0` images, `mu`, `sigma`, `mu_s`, `sigma_s`): statistics of
  the TF graph, mode `tf1`; the images give KID's and precision/recall's features.
Statistics are never compared across input modes or (where the file records them) weights:
that is an error naming both.

Reference statistics of a TFDS split are cached, in `cache_dir`, under a key of dataset,
split, preprocessing, image size, mode and weights sha256 (`cached`; with several JAX
processes all measure together and process 0 writes).
"""

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import zipfile

import jax
import numpy as np

from ldm_jax.eval import features as features_lib
from ldm_jax.eval import image_sets

FORMAT = 1  # Of our statistics files; part of the cache key.
DEFAULT_CACHE = os.path.join("~", ".cache", "ldm_jax", "inception_statistics")


@dataclasses.dataclass
class Statistics:
  """One side's Inception statistics (float64) and, when kept, its pool3 features."""
  name: str
  mode: str
  count: int | None  # None: a foreign file that does not say.
  mu: np.ndarray
  sigma: np.ndarray
  mu_s: np.ndarray | None = None  # sFID's (spatial) statistics.
  sigma_s: np.ndarray | None = None
  pool3: np.ndarray | None = None  # [N, 2048] float32 (KID, precision/recall).
  logits: np.ndarray | None = None  # [N, 1008] float32 (IS of an image set).
  weights_sha256: str | None = None  # None: not recorded (pytorch-fid's, ADM's files).
  kind: str = "images"  # 'images', 'ldm_jax', 'pytorch_fid' or 'adm'.
  meta: dict = dataclasses.field(default_factory=dict)  # Our files' JSON record.
  keep: list = dataclasses.field(default_factory=list, repr=False)  # Memory-map owners.


def from_features(name: str, features: features_lib.Features, mode: str,
                  weights_sha256: str) -> Statistics:
  mu, sigma = features.pool3.mean_and_covariance()
  mu_s, sigma_s = features.spatial.mean_and_covariance()
  return Statistics(name, mode, features.count, mu, sigma, mu_s, sigma_s, features.pool3_all,
                    features.logits, weights_sha256, keep=[features])


def measure(images: image_sets.ImageSet, extractor: features_lib.Extractor,
            weights_sha256: str, *, keep_pool3=False, keep_logits=False,
            progress=False) -> Statistics:
  """Extracts an image set's features (streamed) into its statistics."""
  extracted = features_lib.extract(images, extractor, keep_pool3=keep_pool3,
                                   keep_logits=keep_logits, progress=progress)
  return from_features(images.name, extracted, extractor.mode, weights_sha256)


def is_statistics_file(path: str) -> bool:
  """Whether `path` is an .npz holding `mu` and `sigma`."""
  if not (os.path.isfile(path) and path.endswith(".npz")):
    return False
  try:
    with zipfile.ZipFile(path) as archive:
      names = set(archive.namelist())
  except (OSError, zipfile.BadZipFile):
    return False
  return {"mu.npy", "sigma.npy"} <= names


def load(path: str, *, declared_mode: str | None = None) -> Statistics:
  """A statistics .npz (see the module docstring). `declared_mode` states the input mode of
  a foreign file whose maker used other inputs than its kind's usual ones."""
  with np.load(path, allow_pickle=False) as data:
    keys = set(data.files)
    if not {"mu", "sigma"} <= keys:
      raise ValueError(f"{path} holds {sorted(keys)}; Inception statistics are `mu` and "
                       f"`sigma` (ours, pytorch-fid's, ADM's reference batches).")
    arrays = {k: data[k] for k in keys if k != "arr_0"}
  mu, sigma = np.asarray(arrays["mu"], np.float64), np.asarray(arrays["sigma"], np.float64)
  if mu.shape != (2048,) or sigma.shape != (2048, 2048):
    raise ValueError(f"{path}: mu {mu.shape}, sigma {sigma.shape}; expected pool3's (2048,) "
                     f"and (2048, 2048).")
  spatial = [np.asarray(arrays[k], np.float64) if k in arrays else None
             for k in ("mu_s", "sigma_s")]
  if "ldm_jax" in arrays:
    meta = json.loads(str(arrays["ldm_jax"]))
    if declared_mode not in (None, meta["mode"]):
      raise ValueError(f"{path} records mode {meta['mode']!r}; it cannot be declared "
                       f"{declared_mode!r}.")
    return Statistics(path, meta["mode"], meta["count"], mu, sigma, *spatial,
                      pool3=arrays.get("pool3"), weights_sha256=meta["weights_sha256"],
                      kind="ldm_jax", meta=meta)
  if "arr_0" in keys:  # ADM's reference batch: TF graph statistics + images.
    kind, mode = "adm", "tf1"
  else:
    kind, mode = "pytorch_fid", "pytorch_fid"
  return Statistics(path, declared_mode or mode, None, mu, sigma, *spatial, kind=kind)


def check_mode(stats: Statistics, mode: str) -> None:
  """Refuses statistics made with another input mode than the one the samples are read in."""
  if stats.mode == mode:
    return
  hint = {"pytorch_fid": "pytorch-fid's statistics files are made with its inputs",
          "adm": "ADM's reference batches are the TF graph's, mode tf1"}.get(stats.kind, "")
  raise ValueError(
      f"{stats.name} holds statistics of mode {stats.mode!r}, the samples are read with mode "
      f"{mode!r}: the same images give other features in each mode, so their FID would mean "
      f"nothing. Use --mode={stats.mode}" + (f" ({hint})." if hint else "."))


def check_comparable(samples: Statistics, reference: Statistics) -> None:
  """Refuses statistics of different input modes or Inception weights."""
  check_mode(reference, samples.mode)
  check_mode(samples, reference.mode)
  if None not in (samples.weights_sha256, reference.weights_sha256) and (
      samples.weights_sha256 != reference.weights_sha256):
    raise ValueError(f"{reference.name} was made with Inception weights of sha256 "
                     f"{reference.weights_sha256[:12]}..., {samples.name} with "
                     f"{samples.weights_sha256[:12]}...: use the same weights file.")


def save(path: str, stats: Statistics, *, source: str | None = None,
         extra: dict | None = None) -> None:
  """Writes `stats` to a new .npz (never over a file; see the module docstring)."""
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; statistics are never written over.")
  arrays = dict(mu=stats.mu, sigma=stats.sigma)
  if stats.mu_s is not None:
    arrays.update(mu_s=stats.mu_s, sigma_s=stats.sigma_s)
  if stats.pool3 is not None:
    arrays["pool3"] = np.asarray(stats.pool3, np.float32)
  meta = dict(format=FORMAT, mode=stats.mode, weights_sha256=stats.weights_sha256,
              count=stats.count, source=source or stats.name, **(extra or {}))
  arrays["ldm_jax"] = np.asarray(json.dumps(meta))
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  # Written beside the target, then linked into place: no reader sees half a file, and a
  # file that appeared meanwhile is not replaced.
  with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz.tmp", delete=False) as f:
    np.savez(f, **arrays)
  try:
    os.link(f.name, path)
  finally:
    os.unlink(f.name)


def cache_path(cache_dir: str, key: dict) -> str:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{key['dataset']}-{key['split']}-"
                f"{key['image_size']}px-{key['mode']}")
  return os.path.join(os.path.expanduser(cache_dir), f"{slug}-{digest}.npz")


def cached(images: image_sets.ImageSet, key: dict, extractor: features_lib.Extractor,
           weights_sha256: str, *, cache_dir: str | None, keep_pool3: bool = False,
           progress: bool = False) -> tuple[Statistics, str | None]:
  """(statistics, cache file) of `images`, read from `cache_dir` when an entry with the same
  key (and pool3 features, when `keep_pool3`; an entry with them serves without) exists, else
  measured and stored there.
  cache_dir None or '': measured, not stored."""
  key = dict(key, format=FORMAT, mode=extractor.mode, weights_sha256=weights_sha256,
             pool3_kept=bool(keep_pool3))
  if not cache_dir:
    return measure(images, extractor, weights_sha256, keep_pool3=keep_pool3,
                   progress=progress), None
  path = cache_path(cache_dir, key)
  fuller = cache_path(cache_dir, dict(key, pool3_kept=True))  # Serves without pool3 too.
  if not keep_pool3 and not os.path.isfile(path) and os.path.isfile(fuller):
    key, path = dict(key, pool3_kept=True), fuller
  found = os.path.isfile(path)
  if jax.process_count() > 1:  # All processes read it, or all measure (a collective).
    found = bool(features_lib.allgather(np.asarray([found])).all())
  if found:
    stats = load(path)
    if stats.meta.get("key") != key:
      raise ValueError(f"{path} is not the cache entry of {key} (it holds "
                       f"{stats.meta.get('key')}); remove it.")
    stats.name = f"{images.name} (cached in {path})"
    return stats, path
  stats = measure(images, extractor, weights_sha256, keep_pool3=keep_pool3, progress=progress)
  if jax.process_index() == 0:
    try:
      save(path, stats, source=images.name, extra=dict(key=key))
    except FileExistsError:  # Another run stored the same entry meanwhile.
      pass
  return stats, path
