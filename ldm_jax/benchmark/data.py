"""Input-pipeline throughput on this host (`benchmark.py --data=...`): images per second and
per host core of our tf.data pipelines (ldm_jax/data/pipeline.py, batches as NumPy, no
device), beside a plain tf.data pipeline written to tf.data's own performance guide doing
the same work, so a gap is visible as a ratio. Imports TensorFlow (the synthetic-data
benchmarks do not).

  jpeg_folder   a folder of JPEG photos (made here from scikit-image's bundled photos, 320 to
                512 px), shorter side resized to 256 (bicubic), random 256 crop, flip, to
                [-1, 1]: an image-folder run at 256 px;
  latent_cache  a latent cache as MLPerf's SD recipe reads it: 32x32x8 kl-f8 moments and a
                77x1024 caption context per example (TFDS files written here);
  bsrgan        jpeg_folder plus LDM-BSR's degradation of each crop to 64 px (`low_res`).
"""

import dataclasses
import os
import tempfile
import time

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ldm_jax.data import pipeline
from ldm_jax.data import sources

KINDS = ("jpeg_folder", "latent_cache", "bsrgan")
MLPERF_IMAGES_PER_SEC = 160.0  # Our SD2 512 px target per H100/H200 (MLPerf v4.1: 137-145).
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry",
           "hubble_deep_field", "retina")


@dataclasses.dataclass
class Result:
  kind: str
  pipeline: str  # 'ours' or 'tf.data guide'.
  images_per_sec: float
  host_cores: int
  batches: int
  batch_size: int

  @property
  def images_per_sec_per_core(self) -> float:
    return self.images_per_sec / self.host_cores

  def as_dict(self) -> dict:
    return {**dataclasses.asdict(self),
            "images_per_sec_per_core": self.images_per_sec_per_core,
            "cores_for_mlperf_rate": MLPERF_IMAGES_PER_SEC / self.images_per_sec_per_core}


def host_cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def write_jpeg_folder(folder: str, count: int, seed: int = 0) -> str:
  """`count` JPEGs (quality 90) cut from scikit-image's photos at 320-512 px."""
  import skimage.data  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  photos = [np.asarray(getattr(skimage.data, name)()) for name in _PHOTOS]
  photos = [p if p.ndim == 3 else np.stack([p] * 3, -1) for p in photos]
  os.makedirs(folder, exist_ok=True)
  for i in range(count):
    photo = Image.fromarray(photos[i % len(photos)][..., :3].astype(np.uint8))
    side = int(rng.integers(320, 513))
    w, h = photo.size
    scale = side / min(w, h)
    photo = photo.resize((max(side, round(w * scale)), max(side, round(h * scale))),
                         Image.BICUBIC)
    photo.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
  return folder


def write_latent_cache(directory: str, count: int) -> str:
  """A TFDS latent cache of `count` random examples in latent_cache.py's layout."""
  from ldm_jax.ldm import latent_cache  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  examples = [{"moments": rng.standard_normal((32, 32, 8)).astype(np.float32),
               "context": rng.standard_normal((77, 1024)).astype(np.float32),
               "source_id": f"synthetic-{i}"} for i in range(count)]
  features = latent_cache._features((32, 32, 8), None, False, False, (77, 1024))  # pylint: disable=protected-access
  tfds.dataset_builders.store_as_tfds_dataset(
      name="latent_cache", version="1.0.0", features=features,
      split_datasets={"train": list(enumerate(examples))}, data_dir=directory,
      disable_shuffling=True)
  return os.path.join(directory, "latent_cache", "1.0.0")


def _data_config(**overrides) -> ml_collections.ConfigDict:
  from ldm_jax.recipes import common  # pylint: disable=import-outside-toplevel
  config = common.data_config(image_size=256, crop="random", random_flip=True)
  config.update(overrides)
  return config


def _time(iterator, batches: int, warmup: int) -> float:
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return time.perf_counter() - start


def ours(config: ml_collections.ConfigDict, batches: int, warmup: int) -> float:
  """Images/s of pipeline.create_dataset (one process, training order) as NumPy."""
  builder = sources.load_builder(config)
  ds = pipeline.create_dataset(config, builder=builder, split=config.train_split, train=True,
                               seed=0, batch_size=config.batch_size, process_index=0,
                               process_count=1)
  seconds = _time(iter(tfds.as_numpy(ds)), batches, warmup)
  return batches * config.batch_size / seconds


def guide_jpeg(folder: str, batch_size: int, batches: int, warmup: int,
               degrade: bool = False) -> float:
  """The same work written as tf.data's performance guide has it: files listed and
  shuffled, read and decoded in a parallel map (AUTOTUNE, deterministic=False), batched,
  prefetched."""
  from ldm_jax.data import degradation  # pylint: disable=import-outside-toplevel
  from ldm_jax.data import preprocess  # pylint: disable=import-outside-toplevel

  def load(path):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    crop = preprocess.resize_crop_flip([image], image_size=256, crop="random",
                                       random_flip=True, resize_method=["bicubic"],
                                       seed=seed)[0]
    out = {"image": preprocess.to_model_range(crop, None)}
    if degrade:
      out["low_res"] = degradation.degrade(crop / 255.0, seed, factor=4, variant="bsrgan")
    return out

  files = tf.data.Dataset.list_files(os.path.join(folder, "*.jpg"), shuffle=True, seed=0)
  options = tf.data.Options()
  options.deterministic = False
  ds = (files.repeat().map(load, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True).with_options(options)
        .prefetch(tf.data.AUTOTUNE))
  seconds = _time(iter(tfds.as_numpy(ds)), batches, warmup)
  return batches * batch_size / seconds


def run(kinds, *, batch_size: int = 32, batches: int = 20, warmup: int = 3,
        workdir: str | None = None) -> list[Result]:
  """Each kind's throughput, ours and the guide's (jpeg kinds), on this host."""
  unknown = [k for k in kinds if k not in KINDS]
  if unknown:
    raise ValueError(f"--data={','.join(kinds)}: unknown {unknown}; expected some of {KINDS}.")
  cores, results = host_cores(), []
  with tempfile.TemporaryDirectory(dir=workdir) as tmp:
    data_dir = os.path.join(tmp, "tfds")
    folder = None
    if {"jpeg_folder", "bsrgan"} & set(kinds):
      folder = write_jpeg_folder(os.path.join(tmp, "photos"), max(64, 2 * batch_size))
    for kind in kinds:
      if kind == "latent_cache":
        name = write_latent_cache(os.path.join(tmp, "cache"), max(64, 2 * batch_size))
        config = _data_config(name=name, latent_key="moments", crop="center",
                              random_flip=False, batch_size=batch_size, data_dir=data_dir)
        pairs = [("ours", ours(config, batches, warmup))]
      else:
        degrade = kind == "bsrgan"
        config = _data_config(name="image_folder", folder=folder, batch_size=batch_size,
                              data_dir=data_dir)
        if degrade:
          config.update(degradation="bsrgan", degradation_factor=4)
        pairs = [("ours", ours(config, batches, warmup)),
                 ("tf.data guide", guide_jpeg(folder, batch_size, batches, warmup, degrade))]
      for label, per_sec in pairs:
        results.append(Result(kind, label, per_sec, cores, batches, batch_size))
  return results


def table(results) -> str:
  rows = [f"{'input':<14}{'pipeline':<16}{'img/s':>9}{'img/s/core':>12}"
          f"{'cores for ' + format(MLPERF_IMAGES_PER_SEC, '.0f') + ' img/s':>20}"]
  for r in results:
    rows.append(f"{r.kind:<14}{r.pipeline:<16}{r.images_per_sec:>9.1f}"
                f"{r.images_per_sec_per_core:>12.1f}"
                f"{MLPERF_IMAGES_PER_SEC / r.images_per_sec_per_core:>20.1f}")
  return "\n".join(rows)
