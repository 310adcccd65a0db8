"""NLayerDiscriminator against taming-transformers' (PyTorch), and the taming key map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import references
from tests import torch_reference as ref

torch = ref.torch
taming_model = references.require("taming.modules.discriminator.model")

from ldm_jax.convert import taming  # pylint: disable=g-import-not-at-top
from ldm_jax.convert import torch_weights  # pylint: disable=g-import-not-at-top
from ldm_jax.models.discriminator import BatchNorm  # pylint: disable=g-import-not-at-top
from ldm_jax.models.discriminator import NLayerDiscriminator  # pylint: disable=g-import-not-at-top
from ldm_jax.models.discriminator import output_size  # pylint: disable=g-import-not-at-top

TOLERANCE = 1e-5

# name -> (input_nc, ndf, n_layers, image side)
SETTINGS = {"rgb_3_layers": (3, 16, 3, 32), "gray_1_layer": (1, 8, 1, 12),
            "rgb_4_layers": (3, 8, 4, 48), "rgb_0_layers": (3, 8, 0, 10)}


def taming_discriminator(input_nc, ndf, n_layers, seed=0):
  """taming's discriminator with random weights *and* random running statistics."""
  theirs = taming_model.NLayerDiscriminator(input_nc=input_nc, ndf=ndf, n_layers=n_layers)
  ref.randomize(theirs, seed=seed)
  generator = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for module in theirs.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        c = module.num_features
        module.weight.copy_(1.0 + 0.1 * torch.randn(c, generator=generator))
        module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
        module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
  return theirs


def _image(input_nc, side, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (3, side, side, input_nc)).astype(
      np.float32)


def running_stats(theirs):
  """Our batch_stats layout of taming's BatchNorm buffers (main.{i} -> main_{i})."""
  stats = {}
  for name, module in theirs.main.named_children():
    if isinstance(module, torch.nn.BatchNorm2d):
      stats[f"main_{name}"] = {"mean": module.running_mean.numpy().copy(),
                               "var": module.running_var.numpy().copy()}
  return stats


@pytest.mark.parity
@pytest.mark.parametrize("name", list(SETTINGS))
def test_matches_taming_in_eval_and_train_mode(name):
  input_nc, ndf, n_layers, side = SETTINGS[name]
  theirs = taming_discriminator(input_nc, ndf, n_layers)
  ours = NLayerDiscriminator(ndf=ndf, n_layers=n_layers)
  params, stats = taming.from_taming(theirs.state_dict())
  x = _image(input_nc, side)

  theirs.eval()
  with torch.no_grad():
    eval_ref = ref.nhwc(theirs(ref.nchw(x)))
  eval_out = ours.apply({"params": params, "batch_stats": stats}, x)

  theirs.train()
  with torch.no_grad():
    train_ref = ref.nhwc(theirs(ref.nchw(x)))
  train_out, updates = ours.apply({"params": params, "batch_stats": stats}, x, train=True,
                                  mutable=["batch_stats"])
  side_out = output_size(side, n_layers)
  assert eval_out.shape == train_out.shape == (3, side_out, side_out, 1)
  assert eval_out.dtype == jnp.float32
  errors = {"eval": ref.relative_error(eval_out, eval_ref),
            "train": ref.relative_error(train_out, train_ref)}
  updated = running_stats(theirs)
  assert set(updates["batch_stats"]) == set(updated) == set(stats)
  for module, leaves in updated.items():
    for leaf, value in leaves.items():
      assert not np.allclose(value, stats[module][leaf])  # The train call moved them.
      errors[f"{module}/{leaf}"] = ref.relative_error(updates["batch_stats"][module][leaf],
                                                      value)
  print(f"NLayerDiscriminator[{name}] relative errors: {errors}")
  assert max(errors.values()) <= TOLERANCE, errors
  assert not np.allclose(eval_out, train_out)  # The two modes really differ.


def test_init_follows_taming_weights_init():
  model = NLayerDiscriminator(ndf=64, n_layers=3)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  params = variables["params"]
  theirs = taming_model.NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3)
  shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()
            if not k.endswith("num_batches_tracked")}
  assert len(jax.tree.leaves(params)) + 2 * 3 == len(shapes)  # + BN running mean/var.
  kernels = np.concatenate([np.ravel(params[m]["kernel"]) for m in params
                            if "kernel" in params[m]])
  scales = np.concatenate([np.ravel(params[m]["scale"]) for m in params
                           if "scale" in params[m]])
  assert abs(kernels.std() - 0.02) < 1e-3 and abs(kernels.mean()) < 1e-3
  assert abs(scales.std() - 0.02) < 3e-3 and abs(scales.mean() - 1.0) < 3e-3
  for m in ("main_3", "main_6", "main_9"):
    np.testing.assert_array_equal(params[m]["bias"], 0.0)
    np.testing.assert_array_equal(variables["batch_stats"][m]["mean"], 0.0)
    np.testing.assert_array_equal(variables["batch_stats"][m]["var"], 1.0)
  for m, fan_in in (("main_0", 3 * 16), ("main_11", 512 * 16)):
    bias = np.asarray(params[m]["bias"])
    assert np.abs(bias).max() <= 1 / np.sqrt(fan_in) and np.abs(bias).max() > 0
  assert {m for m in params if "bias" in params[m] and "kernel" in params[m]} == {
      "main_0", "main_11"}  # Convs followed by BatchNorm have no bias, as in taming.


def test_jitted_train_call_updates_stats_and_has_gradients():
  model = NLayerDiscriminator(ndf=8, n_layers=2)
  x = jnp.asarray(_image(3, 16))
  variables = model.init(jax.random.key(1), x)
  params, stats = variables["params"], variables["batch_stats"]

  @jax.jit
  def step(params, stats, x):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                    mutable=["batch_stats"])
      return jnp.mean(jax.nn.relu(1.0 - logits)), updates["batch_stats"]
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, new_stats, grads

  loss, new_stats, grads = step(params, stats, x)
  assert np.isfinite(float(loss))
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
  assert not np.allclose(new_stats["main_3"]["mean"], stats["main_3"]["mean"])
  # Eval mode reads the statistics and changes nothing.
  out, mutated = model.apply({"params": params, "batch_stats": new_stats}, x,
                             mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, mutated["batch_stats"], new_stats)
  assert out.shape == (3, 2, 2, 1)


def test_from_taming_is_strict_and_takes_a_prefix():
  theirs = taming_discriminator(3, 8, 2, seed=3)
  state = {k: v.numpy() for k, v in theirs.state_dict().items()}
  params, stats = taming.from_taming({f"loss.discriminator.{k}": v for k, v in state.items()},
                                     prefix="loss.discriminator.")
  np.testing.assert_array_equal(params["main_2"]["kernel"],
                                state["main.2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(stats["main_6"]["var"], state["main.6.running_var"])
  assert "main_2" not in stats and "bias" not in params["main_2"]

  model = NLayerDiscriminator(ndf=8, n_layers=2, input_nc=3)
  missing = {k: v for k, v in state.items() if k != "main.3.running_mean"}
  with pytest.raises(torch_weights.WeightMismatchError, match=r"main_3/running_mean"):
    taming.from_taming(missing, model)
  extra = {**state, "main.2.bias": np.zeros(16, np.float32)}
  with pytest.raises(torch_weights.WeightMismatchError, match=r"unexpected.*\n.*main\.2\.bias"):
    taming.from_taming(extra, model)
  stray = {**state, "main.2.num_batches_tracked": np.zeros((), np.int64)}
  with pytest.raises(torch_weights.WeightMismatchError, match=r"main\.2\.num_batches_tracked"):
    taming.from_taming(stray, model)
  wrong = {**state, "main.6.weight": np.ones(8, np.float32)}
  with pytest.raises(torch_weights.WeightMismatchError, match=r"main\.6\.weight \(8,\)"):
    taming.from_taming(wrong, model)
  with pytest.raises(torch_weights.WeightMismatchError, match=r"main\.0\.weight"):
    taming.from_taming({"conv.weight": np.zeros((8, 3, 4, 4))})


def test_input_errors_name_the_shape():
  model = NLayerDiscriminator(ndf=8, n_layers=3, input_nc=3)
  with pytest.raises(ValueError, match=r"input_nc=3.*1 channels"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(ValueError, match=r"side 16 leaves no logits"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match=r"more than one value per channel"):
    BatchNorm().init(jax.random.key(0), jnp.zeros((1, 1, 1, 4)), train=True)
