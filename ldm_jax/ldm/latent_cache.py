"""A latent cache: the frozen first stage's encodings of a dataset, stored once as a TFDS
dataset, so LDM training skips the encoder.

  python -m ldm_jax.ldm.latent_cache --config=configs/x.py --out=DIR
  python train.py --config=configs/x.py --workdir=RUN \
      --config.data.name=<printed directory> --config.data.latent_key=moments

What is stored per example is the encoder's raw output (`FirstStage.moments`: mean and
log-variance for KL models, so every step still draws a fresh posterior sample with its own
key; pre-quantisation latents for VQ), of the center crop and, when `data.random_flip`, of
its mirror image: the training pipeline picks the twin with the same per-example seed as it
would flip the image. A step from the cache therefore sees what a step encoding images on
the fly sees, up to float rounding (tests/ldm/latent_cache_test.py). Random crops cannot be
cached (`data.crop` must be 'center'); conditions made from the image itself
(super-resolution, inpainting, paired or semantic maps) need the images and are refused.

For conditioning.type='frozen_text' (Stable Diffusion's recipe, as MLPerf's SD reference
precomputes both) each caption's context from the frozen text encoder is stored too, as
`context` [L, width] float32, and training reads it instead of running the encoder.

Next to the TFDS files, `first_stage.json` records the first stage's parameter fingerprint
(and the text encoder's); the LDM stage refuses a cache made by other weights.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import app
from absl import flags
from absl import logging

from ldm_jax.data import pipeline
from ldm_jax.data import sources
from ldm_jax.ldm import cache_metadata
from ldm_jax.ldm import first_stage as first_stage_lib
from ldm_jax.ldm import modes

CACHEABLE = modes.CACHEABLE  # Modes whose training inputs are not made from the image.
METADATA = cache_metadata.METADATA


def cache_directory(out: str, name: str = "latent_cache", version: str = "1.0.0") -> str:
  return os.path.join(os.path.abspath(out), name, version)


def _features(shape, labels, captions: bool, flips: bool, context_shape=None):
  tensor = lambda: tfds.features.Tensor(shape=shape, dtype=np.float32)
  features = {"moments": tensor(), "source_id": tfds.features.Text()}
  if context_shape is not None:
    features["context"] = tfds.features.Tensor(shape=context_shape, dtype=np.float32)
  if flips:
    features["moments_flipped"] = tensor()
  if labels is not None:
    features["label"] = labels
  if captions:
    features["caption"] = tfds.features.Text()
  return tfds.features.FeaturesDict(features)


def _encode_split(fs, params, data, builder, split: str, batch_size: int, flips: bool,
                  text=None):
  """(index, example) pairs of one split; `text`: the frozen_text mode whose contexts are
  stored with the latents."""
  moments_fn = jax.jit(fs.moments)
  context_fn = None if text is None else jax.jit(text.encode)
  ds = pipeline.create_dataset(data, builder=builder, split=split, train=False, seed=0,
                               batch_size=batch_size, process_index=0, process_count=1)
  index = 0
  for batch in ds.as_numpy_iterator():
    keep = batch["mask"].astype(bool)
    images = batch["image"]
    moments = np.asarray(moments_fn(params, images))
    flipped = np.asarray(moments_fn(params, images[:, :, ::-1])) if flips else None
    contexts = None if text is None else np.asarray(context_fn(
        text.frozen_params, text.tokenize(batch["caption"], training=True)))
    for i in np.flatnonzero(keep):
      example = {"moments": moments[i], "source_id": batch["id"][i]}
      if contexts is not None:
        example["context"] = contexts[i]
      if flips:
        example["moments_flipped"] = flipped[i]
      if "label" in batch:
        example["label"] = int(batch["label"][i])
      if "caption" in batch:
        example["caption"] = batch["caption"][i]
      yield index, example  # Keys in source order; written unshuffled.
      index += 1


def build(config: ml_collections.ConfigDict, out: str, *, batch_size: int = 64) -> str:
  """Encodes the train and eval splits into a TFDS dataset under `out`; returns its
  directory (what `data.name` takes). Refuses an existing cache."""
  if config.conditioning.type not in CACHEABLE:
    raise ValueError(f"conditioning.type={config.conditioning.type!r} builds its condition "
                     f"from the images; a latent cache holds only {CACHEABLE} runs' inputs.")
  if config.data.crop != "center":
    raise ValueError(f"data.crop={config.data.crop!r}: only center crops can be cached; set "
                     f"data.crop='center'.")
  directory = cache_directory(out)
  if os.path.exists(directory):
    raise FileExistsError(f"{directory} exists; a latent cache is never written over. "
                          f"Choose another --out.")
  fs, params = first_stage_lib.load(config)
  text = None
  if config.conditioning.type == "frozen_text":
    if not config.data.caption_key:
      raise ValueError("conditioning.type='frozen_text' caches each caption's context: set "
                       "data.caption_key.")
    text = modes.create(config, fs)
  builder = sources.load_builder(config.data)
  data = config.data.copy_and_resolve_references()
  flips = bool(data.random_flip)
  shape = fs.latent_shape(data.image_size)
  if fs.kind == "kl":
    shape = shape[:2] + (2 * shape[2],)
  labels = builder.info.features[data.label_key] if data.label_key else None
  splits = {}
  for split in dict.fromkeys((data.train_split, data.eval_split)):
    splits[split] = list(_encode_split(fs, params, data, builder, split, batch_size, flips,
                                       text))
    logging.info("Encoded %d examples of %s.", len(splits[split]), split)
  tfds.dataset_builders.store_as_tfds_dataset(
      name="latent_cache", version="1.0.0",
      features=_features(shape, labels, bool(data.caption_key), flips,
                         None if text is None else (text.max_length, text.context_width)),
      split_datasets=splits, data_dir=os.path.abspath(out), disable_shuffling=True,
      description=f"First-stage encodings of {data.name} by {fs.description}.")
  metadata = {"fingerprint": first_stage_lib.fingerprint(params), "kind": fs.kind,
              "first_stage": fs.description, "source": data.name,
              "image_size": data.image_size, "random_flip": flips,
              "splits": {k: len(v) for k, v in splits.items()}}
  if text is not None:
    metadata["text_encoder"] = {"fingerprint": first_stage_lib.fingerprint(text.frozen_params),
                                "tokenizer": config.conditioning.tokenizer or "bytes",
                                "pad": int(text.tokenizer.pad_id)}
  with open(os.path.join(directory, METADATA), "w") as f:
    json.dump(metadata, f, indent=1)
  return directory


_CONFIG = None


def main(argv):
  del argv
  directory = build(_CONFIG.value, flags.FLAGS.out)
  print(f"wrote {directory}\ntrain with --config.data.name={directory} "
        f"--config.data.latent_key=moments")


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file("config", None, "The LDM config.",
                                            lock_config=True)
  flags.DEFINE_string("out", None, "Directory for the cache (a new TFDS data_dir).")
  flags.mark_flags_as_required(["config", "out"])
  app.run(main)
