"""The input pipeline: determinism, exact resume, per-process splits, global sharding, errors."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import common
from ldm_jax.data import pipeline
from ldm_jax.data import sources
from ldm_jax.parallel import sharding


def _config(data_dir, **overrides):
  """Random crops and flips of 64px photo patches to 32px: every random path is exercised."""
  defaults = dict(name="photo_patches/64", data_dir=data_dir, image_size=32, batch_size=16,
                  label_key="label", caption_key="caption", shuffle_buffer=500)
  return common.data_config(**{**defaults, **overrides})


def _take(iterator, n):
  return [{k: np.asarray(v) for k, v in next(iterator).items()} for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_same_seed_same_batches_other_seed_other_batches(data_dir):
  config = _config(data_dir)
  first = _take(pipeline.create_iterator(config, seed=3), 3)
  _assert_same(first, _take(pipeline.create_iterator(config, seed=3), 3))
  other = _take(pipeline.create_iterator(config, seed=4), 1)
  assert not np.array_equal(first[0]["id"], other[0]["id"])


def test_batch_contents(data_dir):
  (batch,) = _take(pipeline.create_iterator(_config(data_dir), seed=0), 1)
  assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() < batch["image"].max() <= 1.0
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (16,)
  assert batch["caption"].dtype == object and isinstance(batch["caption"][0], bytes)
  assert len(set(batch["id"].tolist())) == 16


def test_restored_iterator_continues_exactly(data_dir, tmp_path):
  config = _config(data_dir)
  uninterrupted = pipeline.create_iterator(config, seed=1)
  _take(uninterrupted, 5)
  uninterrupted.save(str(tmp_path / "it"))
  # 120 batches of 16 pass the 1,870-example epoch boundary: reshuffling is covered.
  expected = _take(uninterrupted, 120)
  restored = pipeline.create_iterator(config, seed=1)
  restored.restore(str(tmp_path / "it"))
  assert restored.batches_yielded == 5
  _assert_same(expected, _take(restored, 120))


def test_restore_refuses_another_stream(data_dir, tmp_path):
  iterator = pipeline.create_iterator(_config(data_dir), seed=1)
  next(iterator)
  iterator.save(str(tmp_path / "it"))
  other = pipeline.create_iterator(_config(data_dir, batch_size=32), seed=1)
  with pytest.raises(ValueError, match="batch_size.*16.*32"):
    other.restore(str(tmp_path / "it"))
  with pytest.raises(FileNotFoundError, match="process_0_of_1.json"):
    other.restore(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("train", [False, True])
def test_process_splits_are_disjoint_and_complete(data_dir, train):
  config = _config(data_dir, name="digits", image_size=8, batch_size=32)
  builder = sources.load_builder(config)
  split, total = ("test", 360) if not train else ("train", 1437)
  ids, counts = [], []
  for process in range(2):
    ds = pipeline.create_dataset(config, builder=builder, split=split, train=train, seed=0,
                                 batch_size=16, process_index=process, process_count=2)
    if train:  # One pass of an endless stream: each process has ceil or floor of half.
      n = -(-total // 2) if process == 0 else total // 2
      seen = [i for b in ds.take(n // 16).as_numpy_iterator() for i in b["id"]]
      assert len(set(seen)) == len(seen) == (n // 16) * 16
    else:
      batches = list(ds.as_numpy_iterator())
      counts.append(len(batches))
      seen = [i for b in batches for i, m in zip(b["id"], b["mask"]) if m]
    ids.append(set(seen))
  assert not ids[0] & ids[1]
  if not train:
    assert counts[0] == counts[1] == 12  # ceil(180 / 16): the same count everywhere.
    assert len(ids[0] | ids[1]) == total


def test_eval_stream_is_padded_and_masked(data_dir):
  config = _config(data_dir, name="digits", image_size=8, batch_size=64)
  iterator = pipeline.create_iterator(config, seed=0, train=False)
  batches = _take(iterator, 6)  # ceil(360 / 64) = 6, the last one 24 examples short.
  with pytest.raises(StopIteration):
    next(iterator)
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks.sum() == 360 and masks[:360].all()
  assert (np.concatenate([b["image"] for b in batches])[~masks] == 0).all()


@pytest.mark.parametrize("mesh_shape", [{"data": -1, "fsdp": 1}, {"data": 2, "fsdp": 4}])
def test_global_array_sharded_over_8_devices(data_dir, mesh_shape):
  assert jax.device_count() == 8
  mesh = sharding.create_mesh(_mesh(mesh_shape))
  iterator = pipeline.create_iterator(_config(data_dir), seed=0, mesh=mesh)
  reference = pipeline.create_iterator(_config(data_dir), seed=0, mesh=mesh).next_local()
  batch = next(iterator)
  image = batch["image"]
  assert isinstance(image, jax.Array) and image.shape == (16, 32, 32, 3)
  assert image.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  assert image.sharding.mesh.shape == {"data": mesh.shape["data"], "fsdp": mesh.shape["fsdp"]}
  assert len(image.addressable_shards) == 8
  for shard in image.addressable_shards:
    assert shard.data.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(shard.data, reference["image"][shard.index])
  np.testing.assert_array_equal(np.asarray(batch["label"]), reference["label"])
  assert isinstance(batch["caption"], np.ndarray)  # Text stays on the host.


def _mesh(shape):
  config = common.mesh_config()
  config.update(shape)
  return config


def test_batch_not_divisible_by_devices_or_processes():
  mesh = sharding.create_mesh()
  with pytest.raises(ValueError, match=r"batch_size=30 .* 8 devices"):
    pipeline.local_batch_size(30, mesh, process_count=1)
  with pytest.raises(ValueError, match=r"batch_size=16 .* 3 JAX processes"):
    pipeline.local_batch_size(16, mesh, process_count=3)
  assert pipeline.local_batch_size(16, mesh, process_count=2) == 8


def test_image_size_larger_than_source_is_refused_before_reading(data_dir):
  config = _config(data_dir, name="digits", image_size=32)  # digits are 8x8
  with pytest.raises(ValueError, match=r"image_size=32 .* 8 pixels .*small_images"):
    pipeline.create_iterator(config, seed=0)
  config.small_images = "skip"
  with pytest.raises(ValueError, match="would skip every image"):
    pipeline.create_iterator(config, seed=0)
  config.small_images = "upscale"
  (batch,) = _take(pipeline.create_iterator(config, seed=0), 1)
  assert batch["image"].shape == (16, 32, 32, 1)


def test_unknown_dataset_name(data_dir):
  with pytest.raises(ValueError, match=r"'no_such_set'.*'digits'.*image_folder.*folder"):
    pipeline.create_iterator(_config(data_dir, name="no_such_set"), seed=0)


def test_missing_feature_and_split(data_dir):
  with pytest.raises(ValueError, match=r"caption_key='text'.*has no such feature.*caption"):
    pipeline.create_iterator(_config(data_dir, caption_key="text"), seed=0)
  with pytest.raises(ValueError, match=r"Split 'validation'.*\['test', 'train'\]"):
    pipeline.create_iterator(_config(data_dir, train_split="validation"), seed=0)
  with pytest.raises(ValueError, match=r"label_key='image'|image_key='label'.*not an image"):
    pipeline.create_iterator(_config(data_dir, image_key="label"), seed=0)


@pytest.mark.parametrize("key,value", [("crop", "middle"), ("small_images", "grow"),
                                       ("resize_method", "cubic"), ("image_size", 0),
                                       ("channels", 2)])
def test_bad_enumerations(data_dir, key, value):
  with pytest.raises(ValueError, match=f"data.{key}="):
    pipeline.create_iterator(_config(data_dir, **{key: value}), seed=0)


# A registered TFDS dataset (not one of ours) with images of varying size: exercises the
# by-name path and the per-example size check that static shapes cannot do.
class LdmJaxTestVariable(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 60), (24, 50), (50, 30), (64, 64)] * 4):
      yield i, {"image": rng.integers(0, 255, (h, w, 3), np.uint8), "label": i % 2}


def test_registered_tfds_dataset_by_name(tmp_path):
  config = common.data_config(name="ldm_jax_test_variable", data_dir=str(tmp_path),
                              image_size=32, batch_size=8, label_key="label")
  with pytest.raises(ValueError, match=r"not prepared in data.data_dir.*tfds build"):
    pipeline.create_iterator(config, seed=0)
  tfds.builder("ldm_jax_test_variable", data_dir=str(tmp_path)).download_and_prepare()
  with pytest.raises(ValueError, match=r"Image .* is 24x50 pixels.*image_size=32"):
    _take(pipeline.create_iterator(config, seed=0), 2)
  config.small_images = "skip"
  batches = _take(pipeline.create_iterator(config, seed=0), 3)
  assert all(b["image"].shape == (8, 32, 32, 3) for b in batches)
  # 24x50 and 50x30 are below 32 on their shorter side: 8 of the 16 images remain.
  assert len({i for b in batches for i in b["id"]}) == 8
  config.small_images = "upscale"
  assert _take(pipeline.create_iterator(config, seed=0), 1)[0]["image"].shape[1] == 32


def test_paired_images_share_geometry(tmp_path):
  """A conditioning image gets the same crop and flip: identical inputs stay identical."""

  config = common.data_config(name="ldm_jax_test_paired", data_dir=str(tmp_path),
                              image_size=16, batch_size=8, cond_image_keys=("thermal",))
  tfds.builder("ldm_jax_test_paired", data_dir=str(tmp_path)).download_and_prepare()
  (batch,) = _take(pipeline.create_iterator(config, seed=0), 1)
  np.testing.assert_array_equal(batch["image"][..., :1], batch["thermal"])


class LdmJaxTestPaired(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "thermal": tfds.features.Image(shape=(None, None, 1))}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i in range(8):
      gray = rng.integers(0, 255, (30 + i, 40, 1), np.uint8)
      yield i, {"image": np.repeat(gray, 3, axis=-1), "thermal": gray}


def test_degraded_low_res_field(data_dir, tmp_path):
  """`low_res` is the crop degraded to image_size / factor: close to the crop's own
  downsampling, new draws per epoch in training, fixed per example id in evaluation, and
  restored exactly with the iterator."""
  config = _config(data_dir, degradation="bsrgan_light", degradation_factor=4)
  iterator = pipeline.create_iterator(config, seed=1)
  (batch,) = _take(iterator, 1)
  low, image = batch["low_res"], batch["image"]
  assert low.shape == (16, 8, 8, 3) and low.dtype == np.float32
  np.testing.assert_allclose((low + 1) * 127.5, np.round((low + 1) * 127.5), atol=1e-3)
  pooled = image.reshape(16, 8, 4, 8, 4, 3).mean(axis=(2, 4))
  assert np.abs(low - pooled).mean() < 0.15, np.abs(low - pooled).mean()
  iterator.save(str(tmp_path))
  after = _take(iterator, 1)
  restored = pipeline.create_iterator(config, seed=1)
  restored.restore(str(tmp_path))
  _assert_same(after, _take(restored, 1))

  evals = [_take(pipeline.create_iterator(config, seed=0, train=False), 1)[0]
           for _ in range(2)]
  _assert_same(evals[:1], evals[1:])
  with pytest.raises(ValueError, match="degradation_factor=3: expected a positive integer"):
    pipeline.create_iterator(_config(data_dir, degradation="bsrgan", degradation_factor=3),
                             seed=0)
  with pytest.raises(ValueError, match="degradation='blur'"):
    pipeline.create_iterator(_config(data_dir, degradation="blur"), seed=0)
