"""The tf.data input pipeline and the hand-off of its batches to global jax.Arrays.

Each JAX process reads a disjoint part of the split (`tfds.split_for_jax_process`), shuffles
it with a seed, decodes and preprocesses each example with a stateless per-example seed and
batches `global_batch / process_count` examples. `DataIterator` turns every numeric field of a
batch into one global `jax.Array` sharded over the mesh's batch axes; text fields (captions,
ids) stay host-local NumPy arrays. The iterator's position is saved and restored with
tf.data's own checkpointing (clu's TfDatasetIterator), so a restored iterator continues with
exactly the batches the uninterrupted one would have produced. The saved state includes the
shuffle buffer, which holds *encoded* examples (decoding happens after shuffling), so its size
is about `shuffle_buffer` x the size of one stored image per process.

Output batch keys: `image` (float32, [-1, 1], NHWC), `label` (int32) and `caption` (bytes)
when the config names them, each of `data.cond_image_keys` (same geometry as `image`), each
of `data.label_map_keys` (int32 [B, H, W] class maps, same geometry, nearest resizing), `id`
(the TFDS example id) and, for evaluation, `mask` (False for padding). With
`data.degradation` ('bsrgan' or 'bsrgan_light', see degradation.py), `low_res` is the image
degraded to image_size / `data.degradation_factor` (float32, [-1, 1]; LDM-BSR's input). Reading
a latent cache (`data.latent_key`, see ldm_jax/ldm/latent_cache.py), `moments` replaces `image`
(and `context` comes with it when the cache holds caption contexts).
"""

import json
import os
import re
from typing import Any

from clu.data import dataset_iterator
import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ldm_jax.data import degradation
from ldm_jax.data import preprocess
from ldm_jax.data import sources
from ldm_jax.parallel import sharding

AUTOTUNE = tf.data.AUTOTUNE


def _keep_tf_off_accelerators() -> None:
  """JAX owns the GPUs/TPUs; tf.data runs on the host."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised its devices; nothing to do then.
    pass


def validate(data_config: ml_collections.ConfigDict) -> None:
  """Checks the data config's enumerations and sizes before anything is read."""
  choices = {"crop": preprocess.CROPS, "small_images": preprocess.SMALL_IMAGE_POLICIES,
             "resize_method": preprocess.RESIZE_METHODS}
  for key, allowed in choices.items():
    if data_config[key] not in allowed:
      raise ValueError(f"data.{key}={data_config[key]!r}: expected one of {allowed}.")
  for key in ("image_size", "batch_size", "shuffle_buffer"):
    if data_config[key] <= 0:
      raise ValueError(f"data.{key}={data_config[key]}: expected a positive integer.")
  if data_config.channels not in (None, 1, 3):
    raise ValueError(f"data.channels={data_config.channels}: expected None (keep the "
                     f"source's), 1 or 3.")
  variant = data_config.get("degradation")
  if variant is not None:
    if variant not in degradation.VARIANTS:
      raise ValueError(f"data.degradation={variant!r}: expected None or one of "
                       f"{degradation.VARIANTS}.")
    factor = data_config.get("degradation_factor")
    if not isinstance(factor, int) or factor < 1 or data_config.image_size % factor:
      raise ValueError(f"data.degradation_factor={factor!r}: expected a positive integer "
                       f"dividing data.image_size={data_config.image_size}.")
    if data_config.get("latent_key"):
      raise ValueError("data.degradation needs images; it cannot read a latent cache "
                       "(data.latent_key).")


def local_batch_size(global_batch: int, mesh: Mesh, process_count: int) -> int:
  """The per-process batch; raises unless the global batch splits evenly."""
  devices = sharding.num_batch_shards(mesh)
  if global_batch % devices:
    raise ValueError(
        f"data.batch_size={global_batch} is not divisible by the {devices} devices of the "
        f"mesh (data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); use a multiple of "
        f"{devices}, e.g. {max(devices, global_batch - global_batch % devices)}.")
  if global_batch % process_count:
    raise ValueError(f"data.batch_size={global_batch} is not divisible by the "
                     f"{process_count} JAX processes; use a multiple of {process_count}.")
  return global_batch // process_count


def _feature_keys(data_config, builder) -> dict[str, str]:
  """Output key -> feature name, checked against the dataset's features."""
  wanted = {"image": ("image_key", data_config.image_key)}
  if data_config.label_key:
    wanted["label"] = ("label_key", data_config.label_key)
  if data_config.caption_key:
    wanted["caption"] = ("caption_key", data_config.caption_key)
  for key in data_config.cond_image_keys:
    wanted[key] = ("cond_image_keys", key)
  for key in data_config.get("label_map_keys", ()):
    wanted[key] = ("label_map_keys", key)
  features = builder.info.features
  for out, (field, name) in wanted.items():
    if name not in features:
      raise ValueError(f"data.{field}={name!r}: dataset {builder.name!r} has no such "
                       f"feature; it has {sorted(features.keys())}.")
    if (out == "image" or field in ("cond_image_keys", "label_map_keys")) and not isinstance(
        features[name], tfds.features.Image):
      raise ValueError(f"data.{field}={name!r} is a {type(features[name]).__name__}, not "
                       f"an image feature, in dataset {builder.name!r}.")
    if field == "label_map_keys" and features[name].shape[-1] != 1:
      raise ValueError(f"data.label_map_keys: {name!r} has {features[name].shape[-1]} "
                       f"channels in dataset {builder.name!r}; a label map has one.")
  return {out: name for out, (_, name) in wanted.items()}


def _check_source_size(data_config, builder, image_feature: str) -> None:
  """Refuses, before reading, an image_size the source cannot provide without upscaling."""
  shape = builder.info.features[image_feature].shape
  static = shape[0] is not None and shape[1] is not None
  if static:
    min_side = min(shape[:2])
  else:  # Our image_folder records its smallest side; other sources are checked per image.
    min_side = (builder.info.metadata or {}).get("min_side")
  size, policy = data_config.image_size, data_config.small_images
  if min_side is None or min_side >= size or policy == "upscale":
    return
  if policy == "error":
    raise ValueError(
        f"data.image_size={size} is larger than dataset {builder.name!r} provides without "
        f"upscaling (its {'images are' if static else 'smallest image is'} "
        f"{min_side} pixels on the shorter side). Lower data.image_size, or set "
        f"data.small_images='upscale' (or 'skip' to drop smaller images).")
  if static:  # policy == "skip" would drop every example.
    raise ValueError(
        f"data.small_images='skip' with data.image_size={size} would skip every image of "
        f"{builder.name!r} (all are {shape[0]}x{shape[1]}); use 'upscale' or a smaller size.")


def _split_for_process(builder, split: str, process_index: int, process_count: int) -> str:
  base = re.split(r"[\[+]", split, maxsplit=1)[0]
  if base not in builder.info.splits:
    raise ValueError(f"Split {split!r} is not in dataset {builder.name!r}; it has "
                     f"{sorted(builder.info.splits.keys())}.")
  return tfds.split_for_jax_process(split, process_index=process_index,
                                    process_count=process_count)


def _example_fn(data_config, builder, keys: dict[str, str], *, train: bool,
                seed: int, process_index: int):
  """Returns fn(index, serialized example) -> (processed dict, too_small flag)."""
  features = builder.info.features
  label_maps = tuple(data_config.get("label_map_keys", ()))
  image_outs = ["image", *data_config.cond_image_keys, *label_maps]
  size, policy = data_config.image_size, data_config.small_images
  methods = [data_config.resize_method if k not in label_maps else "nearest"
             for k in image_outs]

  def fn(index, example):
    images = [features[keys[k]].decode_example(example[keys[k]]) for k in image_outs]
    checks = [tf.debugging.assert_equal(
        tf.shape(im)[:2], tf.shape(images[0])[:2],
        message=f"data.cond_image_keys / label_map_keys: {k!r} must have the same height "
                f"and width as "
                f"{keys['image']!r}") for k, im in zip(image_outs[1:], images[1:])]
    if policy == "error":
      checks.append(preprocess.assert_large_enough(images[0], size, example["tfds_id"]))
    with tf.control_dependencies(checks):
      too_small = preprocess.is_too_small(images[0], size)
    example_seed = None
    if train:
      example_seed = tf.random.experimental.stateless_fold_in(
          tf.constant([seed, process_index], tf.int64), index)
    images = preprocess.resize_crop_flip(
        images, image_size=size, crop=data_config.crop if train else "center",
        random_flip=train and data_config.random_flip, resize_method=methods,
        seed=example_seed)
    out = {k: tf.cast(im[..., 0], tf.int32) if k in label_maps else
           preprocess.to_model_range(im, data_config.channels if k == "image" else None)
           for k, im in zip(image_outs, images)}
    if data_config.get("degradation"):
      out["low_res"] = _degraded(data_config, images[0], example_seed, example["tfds_id"],
                                 seed)
    if "label" in keys:
      out["label"] = tf.cast(example[keys["label"]], tf.int32)
    if "caption" in keys:
      out["caption"] = example[keys["caption"]]
    if "context" in keys:
      out["context"] = tf.cast(example[keys["context"]], tf.float32)
    out["id"] = example["tfds_id"]
    return out, too_small

  return fn


def _degraded(data_config, image, example_seed, example_id, seed: int):
  """The `low_res` field: the crop (float [0, 255]) degraded, in the model's range.
  Training draws a new degradation per epoch (the example's seed); evaluation one per
  example id, whatever the process count."""
  if example_seed is None:
    id_hash = tf.strings.to_hash_bucket_fast(example_id, 2**62)
    deg_seed = tf.stack([tf.constant(seed, tf.int64), id_hash])
  else:
    deg_seed = tf.random.experimental.stateless_fold_in(example_seed, 0x5eed)
  low = degradation.degrade(image / 255.0, deg_seed, factor=data_config.degradation_factor,
                            variant=data_config.degradation)
  return preprocess.to_model_range(low * 255.0, data_config.channels)


def _latent_example_fn(data_config, keys: dict[str, str], *, train: bool, seed: int,
                       process_index: int):
  """fn(index, example) -> (dict, too_small=False) for a latent cache (ldm/latent_cache.py):
  `moments` is the stored encoding, or its horizontally flipped twin when this example's
  seed flips it, the same decision as `preprocess.resize_crop_flip` makes for its image."""
  flipped = keys.get("moments_flipped")

  def fn(index, example):
    moments = example[keys["moments"]]
    if train and data_config.random_flip:
      example_seed = tf.random.experimental.stateless_fold_in(
          tf.constant([seed, process_index], tf.int64), index)
      moments = tf.cond(preprocess.flip_decision(example_seed, "center"),
                        lambda: example[flipped], lambda: moments)
    out = {"moments": tf.cast(moments, tf.float32)}
    if "label" in keys:
      out["label"] = tf.cast(example[keys["label"]], tf.int32)
    if "caption" in keys:
      out["caption"] = example[keys["caption"]]
    if "context" in keys:
      out["context"] = tf.cast(example[keys["context"]], tf.float32)
    out["id"] = example["tfds_id"]
    return out, tf.constant(False)

  return fn


def _latent_keys(data_config, builder) -> dict[str, str]:
  features = builder.info.features
  name = data_config.latent_key
  keys = {"moments": name}
  for out, field in (("label", "label_key"), ("caption", "caption_key")):
    if data_config.get(field):
      keys[out] = data_config[field]
  if "context" in features:  # Caption contexts of a frozen text encoder.
    keys["context"] = "context"
  missing = [v for v in keys.values() if v not in features]
  if missing:
    raise ValueError(f"data.latent_key / label_key / caption_key: {missing} are not features "
                     f"of the latent cache {builder.name!r} (it has {sorted(features)}).")
  if data_config.crop != "center":
    raise ValueError(f"data.crop={data_config.crop!r}: a latent cache holds center crops; set "
                     f"data.crop='center'.")
  if data_config.random_flip:
    if f"{name}_flipped" not in features:
      raise ValueError(f"data.random_flip=True but the latent cache {builder.name!r} was "
                       f"built without flipped latents; rebuild it with random_flip=True.")
    keys["moments_flipped"] = f"{name}_flipped"
  return keys


def _graph_only(fn):
  """`fn` for tf.data as written, without AutoGraph's rewrite of its Python source: the
  pipeline's branches are tf.cond / tf.while_loop already, and converting the degradation
  chain's source made a process's first super-resolution pipeline take 20 s to build (3 s
  without)."""
  return tf.autograph.experimental.do_not_convert(fn)


def _zeros_like_spec(spec):
  return tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), spec)


def create_dataset(data_config: ml_collections.ConfigDict, *, builder, split: str,
                   train: bool, seed: int, batch_size: int, process_index: int,
                   process_count: int) -> tf.data.Dataset:
  """One process's pipeline: batches of `batch_size` examples as dicts of tensors.

  train=True: shuffled, repeated forever, random crop/flip as configured, full batches.
  train=False: one pass in file order, center crop, padded with `mask=False` examples so that
  every process yields the same number of full batches.
  """
  _keep_tf_off_accelerators()
  cached = bool(data_config.get("latent_key"))
  if cached:
    keys, decoders = _latent_keys(data_config, builder), None
  else:
    keys = _feature_keys(data_config, builder)
    _check_source_size(data_config, builder, keys["image"])
    decoders = {keys[k]: tfds.decode.SkipDecoding()
                for k in ["image", *data_config.cond_image_keys,
                          *data_config.get("label_map_keys", ())]}
  local_split = _split_for_process(builder, split, process_index, process_count)
  # A latent cache is written unshuffled, in its source's order; reading it like any
  # dataset (file shuffling included) is what keeps its stream in step with the source's.
  read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=seed,
                                shuffle_reshuffle_each_iteration=True,
                                enable_ordering_guard=not cached)
  ds = builder.as_dataset(split=local_split, shuffle_files=train, decoders=decoders,
                          read_config=read_config)
  if train:
    ds = ds.shuffle(data_config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.repeat()
  if cached:
    fn = _latent_example_fn(data_config, keys, train=train, seed=seed,
                            process_index=process_index)
  else:
    fn = _example_fn(data_config, builder, keys, train=train, seed=seed,
                     process_index=process_index)
  ds = tf.data.Dataset.zip(tf.data.Dataset.counter(), ds)
  ds = ds.map(_graph_only(fn), num_parallel_calls=AUTOTUNE)
  if train:
    if data_config.small_images == "skip":
      ds = ds.filter(_graph_only(lambda out, too_small: tf.logical_not(too_small)))
    ds = ds.map(_graph_only(lambda out, too_small: out))
    ds = ds.batch(batch_size, drop_remainder=True)
  else:
    skip = data_config.small_images == "skip"
    ds = ds.map(_graph_only(lambda out, too_small: {
        **out, "mask": tf.logical_not(too_small) if skip else tf.constant(True)}))
    counts = [builder.info.splits[_split_for_process(builder, split, p, process_count)]
              .num_examples for p in range(process_count)]
    num_batches = -(-max(counts) // batch_size)
    padding = tf.data.Dataset.from_tensors(_zeros_like_spec(ds.element_spec)).repeat()
    ds = ds.concatenate(padding).take(num_batches * batch_size).batch(batch_size)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(AUTOTUNE)


class DataIterator:
  """Global batches from one process's tf.data pipeline; its position can be saved.

  `next()` returns a dict: numeric fields are global jax.Arrays sharded over the mesh's batch
  axes; text fields stay host-local NumPy arrays of bytes. `save(directory)` /
  `restore(directory)` store each process's position as `process_<i>_of_<n>.*`.
  """

  def __init__(self, dataset: tf.data.Dataset, mesh: Mesh, spec: dict[str, Any],
               info: tfds.core.DatasetInfo | None = None):
    self.info = info  # The source's TFDS info: split sizes, class names, ...
    self._host = dataset_iterator.TfDatasetIterator(dataset, checkpoint=True)
    self._sharding = sharding.batch_sharding(mesh)
    self._spec = spec
    self.batches_yielded = 0

  @property
  def spec(self) -> dict[str, Any]:
    """What identifies this stream (config, split, seed, processes)."""
    return dict(self._spec)

  def __iter__(self):
    return self

  def next_local(self) -> dict[str, np.ndarray]:
    """The next batch as this process's NumPy arrays (no device transfer)."""
    try:
      batch = next(self._host)
    except tf.errors.InvalidArgumentError as e:
      found = re.search(r"assertion failed: \[(.*?)\]", e.message, re.S)
      raise ValueError("Input pipeline failed: " + (
          found.group(1) if found else e.message)) from None
    self.batches_yielded += 1
    return batch

  def __next__(self) -> dict[str, Any]:
    return {k: jax.make_array_from_process_local_data(self._sharding, v)
            if v.dtype.kind in "biuf" else v for k, v in self.next_local().items()}

  def _prefix(self, directory: str) -> str:
    return os.path.join(directory, "process_{process_index}_of_{process_count}".format(
        **self._spec))

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    prefix = self._prefix(directory)
    self._host.save(prefix)
    with open(prefix + ".json", "w") as f:
      json.dump({"spec": self._spec, "batches_yielded": self.batches_yielded}, f, indent=1)

  def restore(self, directory: str) -> None:
    prefix = self._prefix(directory)
    if not os.path.exists(prefix + ".json"):
      raise FileNotFoundError(f"No saved input-pipeline position {prefix}.json (this "
                              f"process's part of {directory}).")
    with open(prefix + ".json") as f:
      saved = json.load(f)
    if saved["spec"] != self._spec:
      diff = sorted(k for k in {*saved["spec"], *self._spec}
                    if saved["spec"].get(k) != self._spec.get(k))
      raise ValueError(
          f"The input-pipeline position in {directory} was saved for a different stream: "
          + "; ".join(f"{k}: saved {saved['spec'].get(k)!r}, now {self._spec.get(k)!r}"
                      for k in diff))
    self._host.restore(prefix)
    self.batches_yielded = saved["batches_yielded"]


def create_iterator(data_config: ml_collections.ConfigDict, *, seed: int,
                    mesh: Mesh | None = None, train: bool = True,
                    split: str | None = None) -> DataIterator:
  """The input pipeline of this process as an iterator of global batches on `mesh`."""
  validate(data_config)
  mesh = sharding.create_mesh() if mesh is None else mesh
  process_index, process_count = jax.process_index(), jax.process_count()
  batch_size = local_batch_size(data_config.batch_size, mesh, process_count)
  builder = sources.load_builder(data_config)
  split = split or (data_config.train_split if train else data_config.eval_split)
  dataset = create_dataset(data_config, builder=builder, split=split, train=train,
                           seed=seed, batch_size=batch_size, process_index=process_index,
                           process_count=process_count)
  data = json.loads(data_config.to_json())
  data.pop("data_dir")  # Moving the prepared data does not change the stream.
  spec = {"data": data, "split": split, "train": train, "seed": seed,
          "process_index": process_index, "process_count": process_count}
  return DataIterator(dataset, mesh, spec, info=builder.info)
