"""The standalone diffusion model: what it draws for the loss, continuous time, sampling."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_ldm
from configs import digits_simple_diffusion
from ldm_jax import sampling
from ldm_jax.ldm import model as model_lib

SHIFTED = "logsnr_shifted_cosine"


def _model(**diffusion):
  config = digits_ldm.get_config("tiny")
  config.diffusion.update(diffusion)
  return model_lib.LatentDiffusion(config)


def _batch(model, b=8):
  rng = np.random.default_rng(0)
  return {"image": rng.uniform(-1, 1, (b, 16, 16, 1)).astype(np.float32),
          "label": rng.integers(0, 10, (b,)).astype(np.int32)}


def _keys():
  return {k: jax.random.key(i) for i, k in enumerate(model_lib.TRAIN_KEYS)}


def test_continuous_schedule_draws_uniform_times_and_conditions_the_network_on_them():
  model = _model(schedule=SHIFTED, prediction="v")
  assert model.schedule.continuous and model.num_timesteps == 1000
  # The shift is by the latent side (8 for the tiny digits model), not the image side.
  np.testing.assert_allclose(model.schedule.logsnr_fn(0.5), 2 * np.log(64 / 8), atol=2e-3)
  fs = model.first_stage_params
  train = model.loss_inputs(fs, _batch(model), _keys(), train=True)
  assert train["t"].dtype == jnp.float32
  assert 0.0 <= float(train["t"].min()) and float(train["t"].max()) < 1.0
  np.testing.assert_allclose(train["time"], train["t"] * 1000, rtol=1e-6)
  alpha, sigma = model.schedule.alpha_sigma(train["t"])
  np.testing.assert_allclose(train["alpha"][:, 0, 0, 0], alpha)
  np.testing.assert_allclose(train["z_t"], alpha[:, None, None, None] * train["z0"] +
                             sigma[:, None, None, None] * train["eps"], rtol=1e-5, atol=1e-6)
  evaluation = model.loss_inputs(fs, _batch(model), _keys(), train=False)
  np.testing.assert_allclose(evaluation["t"], (np.arange(8) + 0.5) / 8)
  params = jax.jit(model.init_params)(jax.random.key(0))
  per_example, mse, _ = jax.jit(lambda p: model.loss(p, fs, _batch(model), _keys()))(params)
  assert per_example.shape == mse.shape == (8,) and bool(jnp.all(jnp.isfinite(per_example)))


def test_discrete_schedule_keeps_integer_timesteps():
  model = _model()
  inputs = model.loss_inputs(model.first_stage_params, _batch(model), _keys(), train=True)
  assert inputs["t"].dtype == jnp.int32
  np.testing.assert_array_equal(inputs["time"], inputs["t"])


@pytest.mark.parametrize("diffusion, message", [
    (dict(schedule=SHIFTED, learn_logvar=True), "learn_logvar and diffusion.elbo_weight"),
    (dict(schedule=SHIFTED, elbo_weight=0.1), "learn_logvar and diffusion.elbo_weight"),
])
def test_per_timestep_tables_are_refused_for_continuous_time(diffusion, message):
  with pytest.raises(ValueError, match=message):
    _model(**diffusion)


@pytest.mark.parametrize("arch", ["uvit", "unet"])
def test_simple_diffusion_tiny_trains_and_samples_any_number_of_steps(tiny_run, arch):
  """simple diffusion's config (tiny): pixels, continuous time, logSNR input, v with the
  eps-space multiscale loss; sampled on the continuous schedule at step counts that do not
  divide its 1000 logging steps."""
  workdir = tiny_run(f"simple_diffusion:tiny,arch={arch}")
  with open(os.path.join(workdir, "result.json")) as f:
    result = json.load(f)
  assert result["step"] == 1 and np.isfinite(result["eval_loss"])
  sampler = sampling.load(workdir)
  model = sampler.model
  assert model.schedule.continuous and model.first_stage.kind == "pixels"
  assert model.network_spec.type == arch and model.network_spec.logsnr_input
  runs = [("ddpm", 3, 2.0), ("ddim", 7, 1.0), ("dpm_solver++", 3, 1.0)]
  for name, steps, scale in runs if arch == "uvit" else runs[:1]:
    out = sampler.sample(4, class_label=[3, 5], steps=steps, sampler=name, seed=1,
                         guidance_scale=scale)
    assert out.images.shape == (4, 16, 16, 1) and out.images.dtype == np.uint8
    assert out.images.std() > 0
  if arch == "uvit":  # Its 2-D positions are square: refused before anything compiles.
    with pytest.raises(ValueError, match="a uvit network draws square images only"):
      sampler.sample(2, class_label=3, height=16, width=32)


def test_the_multiscale_eps_loss_is_what_the_model_trains():
  config = digits_simple_diffusion.get_config("tiny")
  model = model_lib.LatentDiffusion(config)
  assert config.diffusion.multiscale_base == 8 and config.diffusion.weighting == "eps"
  params = jax.jit(model.init_params)(jax.random.key(0))
  params["network"] = jax.tree.map(  # A network that does not output zeros.
      lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params["network"])
  batch = _batch(model)
  @jax.jit
  def run(params, batch):
    per_example, mse, inputs = model.loss(params, None, batch, _keys(), train=False)
    out = model.network.apply({"params": params["network"]}, inputs["z_t"], inputs["time"],
                              None, batch["label"])
    return per_example, mse, inputs, out

  per_example, mse, inputs, out = run(params, batch)
  alpha, sigma = inputs["alpha"], inputs["sigma"]
  v = alpha * inputs["eps"] - sigma * inputs["z0"]
  error = np.asarray(out - v, np.float64)
  # sum over s in (8, 16) of (1 / s) mean(avgpool_s(error)^2), in eps units (x alpha^2).
  pooled = error.reshape(8, 8, 2, 8, 2, 1).mean(axis=(2, 4))
  multiscale = ((pooled**2).mean(axis=(1, 2, 3)) / 8 + (error**2).mean(axis=(1, 2, 3)) / 16)
  expected = np.asarray(alpha).reshape(-1) ** 2 * multiscale
  np.testing.assert_allclose(per_example, expected, rtol=1e-4)
  np.testing.assert_allclose(mse, (error**2).mean(axis=(1, 2, 3)), rtol=1e-4)
