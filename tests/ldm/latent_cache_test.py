"""The latent cache: the same latents, flips and batches as encoding on the fly, and the
same training steps."""

import jax
import numpy as np
import pytest

from configs import digits_ldm
from ldm_jax.data import pipeline
from ldm_jax.ldm import latent_cache
from ldm_jax.parallel import sharding
from ldm_jax.training import loop
from ldm_jax.training import stages


def _config(data_dir, **data):
  config = digits_ldm.get_config("tiny")
  config.data.update(data_dir=data_dir, random_flip=True, **data)
  return config


@pytest.fixture(scope="module")
def cache(data_dir, tmp_path_factory):
  config = _config(data_dir)
  directory = latent_cache.build(config, str(tmp_path_factory.mktemp("cache")))
  return config, directory


def _cached(config, directory):
  cached = config.copy_and_resolve_references()
  cached.data.update(name=directory, latent_key="moments", caption_key=None)
  return cached


@pytest.mark.slow
def test_cached_batches_equal_encoded_image_batches_flips_included(cache):
  config, directory = cache
  stage = stages.create(config)
  mesh = sharding.create_mesh(config.mesh)
  images = pipeline.create_iterator(config.data, seed=3, mesh=mesh, train=True)
  cached = pipeline.create_iterator(_cached(config, directory).data, seed=3, mesh=mesh,
                                    train=True)
  plain_config = config.copy_and_resolve_references()
  plain_config.data.random_flip = False
  plain = pipeline.create_iterator(plain_config.data, seed=3, mesh=mesh, train=True)
  moments = jax.jit(stage.first_stage.moments)
  flipped_seen = 0
  for _ in range(4):
    a, b, c = next(images), next(cached), next(plain)
    np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
    expected = np.asarray(moments(stage.constants["first_stage"], a["image"]))
    np.testing.assert_allclose(np.asarray(b["moments"]), expected, atol=1e-5)
    # The same order without flips: where the image stream flipped, so did the cache.
    flipped = np.any(np.asarray(a["image"]) != np.asarray(c["image"]), axis=(1, 2, 3))
    np.testing.assert_array_equal(np.asarray(a["image"])[flipped],
                                  np.asarray(c["image"])[flipped][:, :, ::-1])
    flipped_seen += int(flipped.sum())
  assert 0 < flipped_seen < 32


def _steps_from_images(config, steps):
  """What the loop's steps do, without its evaluation, sample grids and checkpoints: the
  train step on the image pipeline's batches (the loop itself runs on images in every tiny
  run)."""
  stage = stages.create(config)
  mesh = sharding.create_mesh(config.mesh)
  batches = pipeline.create_iterator(config.data, seed=config.seed, mesh=mesh, train=True)
  key = jax.random.key(config.seed)
  # With the loop's shardings: the same program as the loop's initialisation, compiled once.
  shardings = sharding.tree_shardings(jax.eval_shape(stage.init_state, key), mesh)
  state = jax.jit(stage.init_state, out_shardings=shardings)(key)
  step = jax.jit(stage.train_step, donate_argnums=0)
  consts = jax.device_put(stage.constants, sharding.replicated(mesh))
  for _ in range(steps):
    state, _ = step(state, stage.prepare(next(batches), mesh), consts)
  return state


@pytest.mark.slow
def test_training_from_the_cache_equals_training_from_images(cache, tmp_path):
  config, directory = cache
  config = config.copy_and_resolve_references()
  config.update(num_steps=2, eval_every=100)
  config.optimizer.eps = 1.0  # Compare the steps, not Adam's sign of rounding noise.
  direct = _steps_from_images(config, config.num_steps)
  cached, _ = loop.train_and_evaluate(_cached(config, directory), str(tmp_path / "cache"))
  assert int(cached.step) == int(direct.step) == 2
  for a, b in zip(jax.tree.leaves(jax.device_get(direct.params)),
                  jax.tree.leaves(jax.device_get(cached.params))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_cache_errors(cache, data_dir, tmp_path):
  config, directory = cache
  with pytest.raises(FileExistsError, match="never written over"):
    latent_cache.build(config, directory.rsplit("/latent_cache/", 1)[0])
  other = _cached(config, directory)
  other.autoencoder.ch = 64  # Another (random) autoencoder: other parameters.
  with pytest.raises(ValueError, match="latent cache .* not by this run's first stage"):
    stages.create(other)
  random_crop = _config(data_dir, crop="random")
  with pytest.raises(ValueError, match="only center crops can be cached"):
    latent_cache.build(random_crop, str(tmp_path))


@pytest.mark.slow
def test_frozen_text_trains_from_cached_contexts_as_from_captions(data_dir, tmp_path):
  """Stable Diffusion's recipe at tiny size: the cache stores each caption's context from
  the frozen text encoder; a step reading them equals a step encoding the captions, the
  encoder never trains, and the run samples from a prompt."""
  from configs import stable_diffusion  # pylint: disable=import-outside-toplevel
  from ldm_jax import sampling  # pylint: disable=import-outside-toplevel
  config = stable_diffusion.get_config("tiny")
  config.data.data_dir = data_dir
  config.update(num_steps=1, eval_every=100)
  config.optimizer.eps = 1.0  # Compare the steps, not Adam's sign of rounding noise.
  directory = latent_cache.build(config, str(tmp_path / "cache"))
  stage = stages.create(config)
  assert "conditioner" not in stage.model.param_shapes()  # Nothing of the encoder trains.
  # The stored contexts are the encoder's output for the stored captions.
  cached = _cached(config, directory)
  cached.data.caption_key = "caption"
  batch = next(pipeline.create_iterator(cached.data, seed=0, mesh=sharding.create_mesh(
      config.mesh), train=False))
  tokens = stage.cond.tokenize(batch["caption"])
  expected = np.asarray(jax.jit(stage.cond.encode)(stage.cond.frozen_params, tokens))
  np.testing.assert_allclose(np.asarray(batch["context"]), expected, rtol=1e-5, atol=1e-5)
  direct = _steps_from_images(config, 1)
  run = str(tmp_path / "run")
  state, _ = loop.train_and_evaluate(_cached(config, directory), run)
  for a, b in zip(jax.tree.leaves(jax.device_get(direct.params)),
                  jax.tree.leaves(jax.device_get(state.params))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
  samples = sampling.load(run).sample(2, prompt="a handwritten digit seven",
                                      negative_prompt="a handwritten digit one", steps=2)
  assert samples.images.shape == (2, 16, 16, 1)
  other = config.copy_and_resolve_references()
  other.conditioner.depth = 1  # Another (random) text encoder: its contexts do not fit.
  with pytest.raises(ValueError, match="contexts were made by another text encoder"):
    stages.create(_cached(other, directory))
