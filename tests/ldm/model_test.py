"""The standalone diffusion model: what it draws for the loss, continuous time, sampling."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_ldm
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
  params = model.init_params(jax.random.key(0))
  per_example, mse, _ = model.loss(params, fs, _batch(model), _keys())
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


def test_a_shifted_cosine_config_trains_a_step_and_samples(tiny_run):
  workdir = tiny_run(f"digits_ldm:tiny,schedule={SHIFTED}")
  with open(os.path.join(workdir, "result.json")) as f:
    result = json.load(f)
  assert result["step"] == 1 and np.isfinite(result["eval_loss"])
  sampler = sampling.load(workdir)
  assert sampler.model.schedule.continuous and sampler.config.diffusion.prediction == "v"
  for name in ("ddim", "dpm_solver++"):
    out = sampler.sample(4, class_label=[3, 5], steps=4, sampler=name, seed=1)
    assert out.images.shape == (4, 16, 16, 1) and out.images.dtype == np.uint8
    assert out.images.std() > 0
