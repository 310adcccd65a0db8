"""The LDM stage's pieces: EMA, frozen first stage, condition dropout and null conditions,
concatenated conditions, config errors (8 CPU devices, tiny digits configs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_ldm
from ldm_jax.ldm.modes import base as modes_base
from ldm_jax.ldm.modes import inpainting
from ldm_jax.training import ldm_stage
from ldm_jax.training import stages


def _stage(arg="tiny,class_input=context", **overrides):
  config = digits_ldm.get_config(arg)
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return stages.create(config)


def _batch(stage, size=8, seed=0):
  rng = np.random.default_rng(seed)
  side = stage.config.data.image_size
  batch = {"image": rng.uniform(-1, 1, (size, side, side, 1)).astype(np.float32),
           "label": rng.integers(0, 10, size).astype(np.int32)}
  return batch


@pytest.fixture(scope="module")
def class_stage():
  return _stage(**{"ema.decay": 0.9999})


@pytest.fixture(scope="module")
def two_steps(class_stage):
  stage = class_stage
  state0 = jax.jit(stage.init_state)(jax.random.key(0))
  consts = stage.constants
  before = jax.tree.map(np.array, consts["first_stage"])
  step = jax.jit(stage.train_step)
  state1, metrics1 = step(state0, _batch(stage), consts)
  state2, metrics2 = step(state1, _batch(stage, seed=1), consts)
  return stage, state0, state1, state2, before, (metrics1, metrics2)


def test_ema_update_matches_hand_computation(two_steps):
  stage, state0, state1, state2, _, (m1, m2) = two_steps
  # CompVis LitEma: the n-th update uses min(decay, (1 + n) / (10 + n)).
  d1, d2 = 2 / 11, 3 / 12
  np.testing.assert_allclose(float(m1["ema_decay"]), d1, rtol=1e-6)
  np.testing.assert_allclose(float(m2["ema_decay"]), d2, rtol=1e-6)
  p0, p1, p2 = (jax.tree.map(np.asarray, s.params["model"]) for s in (state0, state1, state2))
  expected = jax.tree.map(lambda a, b, c: d2 * (d1 * a + (1 - d1) * b) + (1 - d2) * c,
                          p0, p1, p2)
  for got, want in zip(jax.tree.leaves(state2.ema_params["model"]), jax.tree.leaves(expected)):
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p0),
                                                       jax.tree.leaves(p2)))


def test_first_stage_is_frozen_and_outside_the_state(two_steps):
  stage, _, _, state2, before, _ = two_steps
  assert set(state2.params["model"]) == {"network", "conditioner"}
  assert set(state2.opt_state) == {"model"}
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(stage.constants["first_stage"])):
    np.testing.assert_array_equal(a, np.asarray(b))  # Unchanged, and not donated.


def test_ema_decay_without_warmup():
  block = digits_ldm.get_config("tiny").ema
  block.warmup = False
  assert float(ldm_stage.ema_decay(block, 1)) == pytest.approx(block.decay)


def test_condition_dropout_rate_and_null_conditions(class_stage):
  cond = class_stage.cond
  keep = np.asarray(cond.keep_flags(jax.random.key(3), 200_000))
  assert abs(keep.mean() - 0.9) < 0.003  # P(drop) = conditioning.dropout = 0.1.
  # A dropped example gets the embedder's null class (index 10), a kept one its own label.
  params = class_stage.init_state(jax.random.key(0)).params["model"]["conditioner"]
  labels = jnp.asarray([3, 3, 7])
  context, y = cond.context_and_labels(params, {"label": labels}, jnp.asarray([1.0, 0.0, 1.0]))
  table = params["embedding"]["embedding"]
  assert y is None and context.shape == (3, 1, 32)
  np.testing.assert_allclose(context[:, 0], table[jnp.asarray([3, 10, 7])])


def test_label_embedding_null_class():
  stage = _stage("tiny,class_input=embedding")
  assert stage.cond.module is None and stage.config.network.num_classes == 11
  context, y = stage.cond.context_and_labels(None, {"label": jnp.asarray([4, 5])},
                                             jnp.asarray([0.0, 1.0]))
  assert context is None
  np.testing.assert_array_equal(y, [10, 5])


def test_text_null_caption_is_the_empty_caption():
  stage = _stage("tiny,cond=caption")
  cond = stage.cond
  tokens = cond.tokenize(["a handwritten digit one", "a handwritten digit two"])
  empty = cond.tokenize([""])[0]
  np.testing.assert_array_equal(cond.null_tokens, empty)
  params = stage.init_state(jax.random.key(0)).params["model"]["conditioner"]
  dropped, _ = cond.context_and_labels(params, {"tokens": tokens}, jnp.asarray([0.0, 1.0]))
  null, _ = cond.context_and_labels(params, {"tokens": empty[None]}, jnp.ones((1,)))
  kept, _ = cond.context_and_labels(params, {"tokens": tokens[1:]}, jnp.ones((1,)))
  np.testing.assert_allclose(dropped[0], null[0], atol=1e-5)
  np.testing.assert_allclose(dropped[1], kept[0], atol=1e-5)


def test_box_masks_and_area_resize():
  masks = np.asarray(inpainting.box_masks(jax.random.key(0), 256, 32))
  assert masks.shape == (256, 32, 32, 1) and set(np.unique(masks)) == {0.0, 1.0}
  covered = masks.mean(axis=(1, 2, 3))
  assert covered.min() > 0.005 and covered.max() < 0.75  # 1..3 boxes of 10..50 % sides.
  x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
  np.testing.assert_allclose(modes_base.area_resize(x, 2)[0, 0, 0, 0], (0 + 1 + 4 + 5) / 4)


@pytest.mark.parametrize("kind", ["low_res", "inpainting", "semantic", "image"])
def test_concat_conditions_and_their_dropout(kind):
  """Each concatenation mode: the right channels at latent size, zeros when dropped."""
  overrides = {"conditioning.type": kind, "conditioning.dropout": 0.5, "network.in_channels": 4,
               "conditioning.num_semantic_classes": 3, "conditioning.key": "cond",
               "conditioner": None, "network.context_dim": None, "data.label_key": None}
  latent, pixels = 4, 1
  extra = {"low_res": pixels, "inpainting": latent + 1, "semantic": 3, "image": latent}[kind]
  overrides["network.in_channels"] = latent + extra
  if kind == "low_res":  # Bicubic downsampling of the image in the step (no key).
    overrides["conditioning.key"] = None
  stage = _stage("tiny,cond=none", **overrides)
  batch = _batch(stage)
  batch.pop("label")
  rng = np.random.default_rng(1)
  if kind == "semantic":
    batch["cond"] = rng.integers(0, 3, (8, 16, 16)).astype(np.int32)
  elif kind == "image":
    batch["cond"] = rng.uniform(-1, 1, (8, 16, 16, 1)).astype(np.float32)
  keep = jnp.asarray([1.0, 0.0] * 4)
  fs = stage.constants["first_stage"]
  c = stage.cond.concat(fs, batch, keep, jax.random.key(0))
  assert c.shape == (8, 8, 8, extra)
  assert float(jnp.abs(c[1::2]).max()) == 0.0 and float(jnp.abs(c[0::2]).max()) > 0.0
  if kind == "semantic":  # Class fractions per latent cell sum to one.
    np.testing.assert_allclose(np.asarray(c[0].sum(-1)), 1.0, rtol=1e-6)
  if kind == "image":  # The others train in ldm_configs_test.py (ldm_sr, ...:tiny).
    state = stage.init_state(jax.random.key(0))
    state, metrics = jax.jit(stage.train_step)(state, batch, stage.constants)
    assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"]))
    grid = stage.sample_grid(state, batch)
    assert grid.shape == (3 * 18, 2 * 18, 1)  # Condition, sample, truth rows of 16 + 2 px.


def test_config_errors():
  with pytest.raises(ValueError, match=r"network.in_channels=5.*expected 4 \(4 latent"):
    _stage(**{"network.in_channels": 5})
  with pytest.raises(ValueError, match="conditioning.type='colour'"):
    _stage(**{"conditioning.type": "colour"})
  with pytest.raises(ValueError, match="needs a null class"):
    _stage(**{"conditioner.add_null_class": False})
  with pytest.raises(ValueError, match="network.context_dim=16: expected the conditioner's"):
    _stage(**{"network.context_dim": 16})
  with pytest.raises(ValueError, match="first_stage.source='cloud'"):
    _stage(**{"first_stage.source": "cloud"})
  with pytest.raises(ValueError, match="diffusion.prediction='score'"):
    _stage(**{"diffusion.prediction": "score"})
  with pytest.raises(ValueError, match="diffusion.elbo_weight > 0 .*weighting='uniform'"):
    _stage(**{"diffusion.elbo_weight": 1.0, "diffusion.weighting": "min_snr"})
  with pytest.raises(FileNotFoundError, match="no checkpoints/ folder.*autoencoder run"):
    _stage(**{"first_stage.source": "workdir", "first_stage.path": "/nonexistent/ae",
              "autoencoder": None})


def test_bf16_compute_with_remat_keeps_float32_parameters_and_ema():
  stage = _stage(**{"network.dtype": "bfloat16", "network.remat": "full"})
  state = stage.init_state(jax.random.key(0))
  state, metrics = jax.jit(stage.train_step)(state, _batch(stage), stage.constants)
  assert bool(metrics["finite"])
  for tree in (state.params, state.ema_params):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
