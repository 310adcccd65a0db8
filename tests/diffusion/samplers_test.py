"""Sampler steps against diffusers' schedulers fed the same model outputs and noise."""

import jax
import numpy as np
import pytest

from ldm_jax.diffusion import samplers
from ldm_jax.diffusion import schedules

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

SHAPE = (2, 4, 4, 3)
TOLERANCE = 1e-5


def _model(x, t):
  """A fixed, smooth stand-in for a network: the same function on both sides."""
  return (0.4 * x + np.sin(0.01 * t + np.arange(x.shape[-1]))).astype(x.dtype)


def _noise(seed, dtype=torch.float32):
  # What diffusers' randn_tensor draws for this generator seed and dtype.
  return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _run(scheduler, our_step, steps, eta=None, dtype=np.float32):
  scheduler.set_timesteps(steps)
  x_theirs = x_ours = np.random.default_rng(0).standard_normal(SHAPE).astype(dtype)
  worst = 0.0
  for i, t in enumerate(scheduler.timesteps.numpy()):
    kwargs = {}
    noise = None
    if eta is not None:
      kwargs["eta"] = eta
      if eta > 0:
        noise = _noise(i)
        kwargs["variance_noise"] = noise
    else:
      kwargs["generator"] = torch.Generator().manual_seed(i)
      noise = _noise(i, torch.float64 if dtype == np.float64 else torch.float32)
    x_theirs = scheduler.step(torch.from_numpy(_model(x_theirs, t)), int(t),
                              torch.from_numpy(x_theirs), **kwargs).prev_sample.numpy()
    t_prev = t - scheduler.config.num_train_timesteps // steps
    x_ours = np.asarray(our_step(x_ours, _model(x_ours, t), int(t), int(t_prev),
                                 None if noise is None else noise.numpy()))
    worst = max(worst, float(np.abs(x_ours - x_theirs).max()))
  return worst


@pytest.mark.parity
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("eta,steps", [(0.0, 50), (0.0, 7), (1.0, 20)])
def test_ddim_matches_diffusers(prediction, eta, steps):
  # Stable Diffusion's settings: scaled-linear betas, steps_offset 1, no alpha_T = 1.
  scheduler = diffusers.DDIMScheduler(
      beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
      set_alpha_to_one=False, steps_offset=1,
      prediction_type="v_prediction" if prediction == "v" else "epsilon")
  schedule = schedules.stable_diffusion()
  np.testing.assert_allclose(schedule.alphas_cumprod, scheduler.alphas_cumprod.numpy(),
                             rtol=1e-6)
  final = float(schedule.alphas_cumprod[0])
  step = lambda x, out, t, t_prev, noise: samplers.ddim_step(
      schedule, prediction=prediction, x=x, out=out, t=t, t_prev=t_prev, eta=eta,
      noise=noise, final_alpha_cumprod=final)[0]
  worst = _run(scheduler, step, steps, eta=eta)
  print(f"DDIM[{prediction}, eta={eta}, {steps} steps] max abs deviation {worst:.2e}")
  assert worst <= TOLERANCE


@pytest.mark.parity
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [1000, 250, 50])
def test_ddpm_matches_diffusers(prediction, steps):
  """Compared in float64 on both sides: in float32, eps-prediction DDPM amplifies rounding
  through x0 = (x - sigma eps) / alpha (alpha_T = 0.0064), so that diffusers' own float32
  trajectory is 6.9e-5 away from its float64 one at 250 steps, far above 1e-5."""
  scheduler = diffusers.DDPMScheduler(
      num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
      clip_sample=False, variance_type="fixed_small",
      prediction_type="v_prediction" if prediction == "v" else "epsilon")
  np.testing.assert_allclose(schedules.linear(1000, 1e-4, 0.02).alphas_cumprod,
                             scheduler.alphas_cumprod.numpy(), rtol=1e-5)
  scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
  with jax.enable_x64(True):
    table = jax.numpy.asarray(scheduler.alphas_cumprod.numpy())
    schedule = schedules.DiscreteSchedule(table, 1.0 - table)
    step = lambda x, out, t, t_prev, noise: samplers.ddpm_step(
        schedule, prediction=prediction, x=x, out=out, t=t, t_prev=t_prev, noise=noise)[0]
    worst = _run(scheduler, step, steps, dtype=np.float64)
  print(f"DDPM[{prediction}, {steps} steps] max abs deviation {worst:.2e}")
  assert worst <= TOLERANCE


@pytest.mark.parametrize("name,kwargs", [
    ("linear", dict(beta_schedule="linear")),
    ("cosine", dict(beta_schedule="squaredcos_cap_v2")),
])
def test_schedule_tables_match_diffusers(name, kwargs):
  theirs = diffusers.DDPMScheduler(**kwargs).alphas_cumprod.numpy()
  ours = getattr(schedules, name)()
  np.testing.assert_allclose(ours.alphas_cumprod, theirs, rtol=1e-5, atol=1e-7)


def test_zero_terminal_snr_matches_diffusers():
  theirs = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                   beta_end=0.012, rescale_betas_zero_snr=True)
  ours = schedules.rescale_zero_terminal_snr(schedules.stable_diffusion())
  np.testing.assert_allclose(ours.alphas_cumprod[:-1], theirs.alphas_cumprod.numpy()[:-1],
                             rtol=1e-5, atol=1e-10)
  assert float(ours.alphas_cumprod[-1]) == 0.0


def test_sample_loop_runs_the_same_steps():
  """The scan loop equals stepping by hand."""
  schedule = schedules.stable_diffusion()
  x_T = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
  model_fn = lambda x, t: 0.4 * x + np.float32(0.001) * t[:, None, None, None]
  out = samplers.sample(model_fn, schedule, x_T, steps=10, timestep_offset=1)
  x = x_T
  for t in samplers.leading_timesteps(1000, 10, offset=1):
    x, _ = samplers.ddim_step(schedule, prediction="eps", x=x, out=model_fn(
        x, np.full((2,), t)), t=t, t_prev=t - 100)
  np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="steps=1001"):
    samplers.sample(model_fn, schedule, x_T, steps=1001)
  with pytest.raises(ValueError, match="pass a PRNG key"):
    samplers.sample(model_fn, schedule, x_T, sampler="ddpm")


def _model_jnp(x, t):
  """_model for batched jnp inputs (t: [B])."""
  return 0.4 * x + jax.numpy.sin(0.01 * t[:, None, None, None] +
                                 jax.numpy.arange(x.shape[-1]))


def _their_trajectory(scheduler, steps):
  scheduler.set_timesteps(steps)
  x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
  xs = []
  for t in scheduler.timesteps.numpy():
    x = scheduler.step(torch.from_numpy(_model(x, t)), int(t), torch.from_numpy(x)) \
        .prev_sample.numpy()
    xs.append(x)
  return np.stack(xs)


def _our_trajectory(sampler, steps, prediction, dtype=np.float32, **kwargs):
  x_T = np.random.default_rng(0).standard_normal(SHAPE).astype(dtype)
  schedule = schedules.stable_diffusion()
  if dtype == np.float64:  # Call under jax.enable_x64(True).
    a = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    schedule = schedules.DiscreteSchedule(jax.numpy.asarray(a), jax.numpy.asarray(1 - a))
  _, inter = samplers.sample(_model_jnp, schedule, x_T, sampler=sampler, steps=steps,
                             prediction=prediction, return_intermediates=True, **kwargs)
  return np.asarray(inter["x"])


@pytest.mark.parity
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [50, 10, 2])
def test_plms_matches_diffusers_pndm(prediction, steps):
  scheduler = diffusers.PNDMScheduler(
      beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
      set_alpha_to_one=False, steps_offset=1,
      prediction_type="v_prediction" if prediction == "v" else "epsilon")
  theirs = _their_trajectory(scheduler, steps)
  ours = _our_trajectory("plms", steps, prediction, timestep_offset=1,
                         final_alpha_cumprod=float(schedules.stable_diffusion()
                                                   .alphas_cumprod[0]))
  # diffusers' first call makes the Euler half of our first (improved-Euler) step.
  worst = float(np.abs(ours - theirs[1:]).max())
  print(f"PLMS[{prediction}, {steps} steps] max abs deviation {worst:.2e}")
  assert worst <= TOLERANCE


@pytest.mark.parity
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [50, 20, 7])
def test_dpm_solver_pp_2m_matches_diffusers(prediction, steps):
  scheduler = diffusers.DPMSolverMultistepScheduler(
      beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, solver_order=2,
      algorithm_type="dpmsolver++", solver_type="midpoint", final_sigmas_type="zero",
      prediction_type="v_prediction" if prediction == "v" else "epsilon")
  theirs = _their_trajectory(scheduler, steps)
  # diffusers' step upcasts to float32, so it runs in float32 only. Our float64 trajectory is
  # the formula check; float32 against float32 differs by both sides' rounding (each within
  # 1e-5 of float64 here: 8.6e-6 and 5.4e-6 at 50 steps, eps).
  with jax.enable_x64(True):
    ours64 = _our_trajectory("dpm_solver++", steps, prediction, dtype=np.float64)
  ours32 = _our_trajectory("dpm_solver++", steps, prediction)
  worst64 = float(np.abs(ours64 - theirs).max())
  worst32 = float(np.abs(ours32 - theirs).max())
  print(f"DPM-Solver++(2M)[{prediction}, {steps} steps] max abs deviation {worst64:.2e} "
        f"(ours float64), {worst32:.2e} (ours float32)")
  assert worst64 <= TOLERANCE
  assert worst32 <= 2 * TOLERANCE
