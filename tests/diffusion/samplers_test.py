"""Sampler steps against diffusers' schedulers fed the same model outputs and noise.

Each sampler is compared twice. In float64 on both sides, on diffusers' own alphas_cumprod
table, only float64 rounding separates the two trajectories: a tight bound checks the step
formulas. In float32 on both sides, as they run, each side's own rounding separates them, and
XLA's CPU code (so its rounding) differs between CPUs: that bound sits well above it.
"""

import sys

import jax
import numpy as np
import pytest

from ldm_jax.diffusion import samplers
from ldm_jax.diffusion import schedules
from tests import references
from tests import torch_reference as ref

diffusers = references.require("diffusers")
torch = ref.torch

SHAPE = (2, 4, 4, 3)
# Float64 on both sides: measured <= 7.3e-14 (DDPM, 1000 steps), far below. A formula error
# is far above: even PLMS weights rounded to float32 (55/24, ...) put 50 steps 1.1e-6 apart.
TOLERANCE = 1e-10
# Float32 on both sides: rounding accumulates over the trajectory and eps-prediction amplifies
# it through x0 = (x - sigma eps) / alpha, by amounts that depend on XLA's CPU code: DDIM's 50
# steps (eps) measured 1.6e-5 here, 8.6e-6 op by op at LLVM's default optimisation level and
# 1.34e-5 on another x86-64 machine. A wrong coefficient or index gives 1e-2 .. 1 (|x| <= 11).
FLOAT32_TOLERANCE = 1e-4
# diffusers' alphas_cumprod is a float32 cumprod of 1000 float32 factors (ours: float64, then
# rounded): measured up to 9.5e-7 apart, element by element.
TABLE_RTOL = 1e-5


def _model(x, t):
  """A fixed, smooth stand-in for a network: the same function on both sides."""
  return (0.4 * x + np.sin(0.01 * t + np.arange(x.shape[-1]))).astype(x.dtype)


def _noise(seed, dtype=torch.float32):
  # What diffusers' randn_tensor draws for this generator seed and dtype.
  return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _to_float64(scheduler):
  """Makes a DDIM/DDPM/PNDM scheduler step in float64 (it computes in its table's and the
  sample's dtype)."""
  scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
  if hasattr(scheduler, "final_alpha_cumprod"):
    scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
  return scheduler


def _float64_schedule(scheduler):
  """Our schedule on the scheduler's own alphas_cumprod, in float64, so that the two sides
  differ only in their step formulas (call under jax.enable_x64)."""
  table = jax.numpy.asarray(scheduler.alphas_cumprod.double().numpy())
  return schedules.DiscreteSchedule(table, 1.0 - table)


def _run(scheduler, our_step, steps, eta=None, dtype=np.float32):
  """Steps both sides from the same x_T, each on its own trajectory; max |ours - theirs|."""
  scheduler.set_timesteps(steps)
  noise_dtype = torch.float64 if dtype == np.float64 else torch.float32
  x_theirs = x_ours = np.random.default_rng(0).standard_normal(SHAPE).astype(dtype)
  worst = 0.0
  for i, t in enumerate(scheduler.timesteps.numpy()):
    kwargs = {}
    noise = None
    if eta is not None:
      kwargs["eta"] = eta
      if eta > 0:
        noise = _noise(i, noise_dtype)
        kwargs["variance_noise"] = noise
    else:
      kwargs["generator"] = torch.Generator().manual_seed(i)
      noise = _noise(i, noise_dtype)
    x_theirs = scheduler.step(torch.from_numpy(_model(x_theirs, t)), int(t),
                              torch.from_numpy(x_theirs), **kwargs).prev_sample.numpy()
    t_prev = t - scheduler.config.num_train_timesteps // steps
    x_ours = np.asarray(our_step(x_ours, _model(x_ours, t), int(t), int(t_prev),
                                 None if noise is None else noise.numpy()))
    worst = max(worst, float(np.abs(x_ours - x_theirs).max()))
  assert x_ours.dtype == x_theirs.dtype == dtype
  return worst


# Compiled once per prediction, eta and dtype (schedule, t and t_prev traced) for all tests,
# rather than run op by op.
_ddim_step = jax.jit(samplers.ddim_step, static_argnames=("prediction", "eta"))
_ddpm_step = jax.jit(samplers.ddpm_step, static_argnames=("prediction",))


def _ddim(schedule, prediction, eta):
  final = float(schedule.alphas_cumprod[0])
  return lambda x, out, t, t_prev, noise: _ddim_step(
      schedule, prediction=prediction, x=x, out=out, t=t, t_prev=t_prev, eta=eta,
      noise=noise, final_alpha_cumprod=final)[0]


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
                             rtol=TABLE_RTOL)
  worst32 = _run(scheduler, _ddim(schedule, prediction, eta), steps, eta=eta)
  _to_float64(scheduler)
  with jax.enable_x64(True):
    worst64 = _run(scheduler, _ddim(_float64_schedule(scheduler), prediction, eta), steps,
                   eta=eta, dtype=np.float64)
  print(f"DDIM[{prediction}, eta={eta}, {steps} steps] max abs deviation {worst64:.2e} "
        f"(float64), {worst32:.2e} (float32)")
  assert worst64 <= TOLERANCE
  assert worst32 <= FLOAT32_TOLERANCE


@pytest.mark.parity
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [1000, 250, 50])
def test_ddpm_matches_diffusers(prediction, steps):
  """In float32, eps-prediction DDPM amplifies rounding through x0 = (x - sigma eps) / alpha
  (alpha_T = 0.0064): diffusers' own float32 trajectory is 6.9e-5 away from its float64 one at
  250 steps. So the float32 comparison runs on diffusers' float32 table (on ours, rounded
  from float64, the tables' 1e-6 differences alone end 2.3e-3 apart) with its own bound:
  measured up to 9e-5 (eps, 1000 steps)."""
  scheduler = diffusers.DDPMScheduler(
      num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
      clip_sample=False, variance_type="fixed_small",
      prediction_type="v_prediction" if prediction == "v" else "epsilon")
  np.testing.assert_allclose(schedules.linear(1000, 1e-4, 0.02).alphas_cumprod,
                             scheduler.alphas_cumprod.numpy(), rtol=TABLE_RTOL)
  ddpm = lambda schedule: lambda x, out, t, t_prev, noise: _ddpm_step(
      schedule, prediction=prediction, x=x, out=out, t=t, t_prev=t_prev, noise=noise)[0]
  schedule = schedules.DiscreteSchedule.from_alphas_cumprod(scheduler.alphas_cumprod.numpy())
  worst32 = _run(scheduler, ddpm(schedule), steps)
  _to_float64(scheduler)
  with jax.enable_x64(True):
    worst64 = _run(scheduler, ddpm(_float64_schedule(scheduler)), steps, dtype=np.float64)
  print(f"DDPM[{prediction}, {steps} steps] max abs deviation {worst64:.2e} (float64), "
        f"{worst32:.2e} (float32)")
  assert worst64 <= TOLERANCE
  assert worst32 <= 5e-4


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


def _their_trajectory(scheduler, steps, dtype=np.float32):
  scheduler.set_timesteps(steps)
  x = np.random.default_rng(0).standard_normal(SHAPE).astype(dtype)
  xs = []
  for t in scheduler.timesteps.numpy():
    x = scheduler.step(torch.from_numpy(_model(x, t)), int(t), torch.from_numpy(x)) \
        .prev_sample.numpy()
    xs.append(x)
  return np.stack(xs)


def _our_trajectory(sampler, steps, prediction, schedule=None, **kwargs):
  """Our trajectory in the schedule's dtype (float64: call under jax.enable_x64)."""
  schedule = schedules.stable_diffusion() if schedule is None else schedule
  x_T = np.random.default_rng(0).standard_normal(SHAPE).astype(schedule.alphas_cumprod.dtype)
  _, inter = samplers.sample(_model_jnp, schedule, x_T, sampler=sampler, steps=steps,
                             prediction=prediction, return_intermediates=True, **kwargs)
  return np.asarray(inter["x"])


# diffusers' PNDM multistep weights, 1 to 4 outputs, newest first, in float64.
PLMS_WEIGHTS = np.array([[1, 0, 0, 0], [3 / 2, -1 / 2, 0, 0], [23 / 12, -16 / 12, 5 / 12, 0],
                         [55 / 24, -59 / 24, 37 / 24, -9 / 24]])


@pytest.mark.parity
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [50, 10, 2])
def test_plms_matches_diffusers_pndm(prediction, steps):
  scheduler = diffusers.PNDMScheduler(
      beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
      set_alpha_to_one=False, steps_offset=1,
      prediction_type="v_prediction" if prediction == "v" else "epsilon")
  theirs32 = _their_trajectory(scheduler, steps)
  ours32 = _our_trajectory("plms", steps, prediction, timestep_offset=1,
                           final_alpha_cumprod=float(schedules.stable_diffusion()
                                                     .alphas_cumprod[0]))
  theirs64 = _their_trajectory(_to_float64(scheduler), steps, np.float64)
  # Our Adams-Bashforth weights are a float32 table (23/12, 55/24, ... rounded: 1e-6 apart
  # after 50 steps in float64): checked against the exact fractions to float32 precision,
  # then the exact fractions run the float64 trajectory.
  weights = samplers._PLMS_WEIGHTS  # pylint: disable=protected-access
  np.testing.assert_allclose(weights, PLMS_WEIGHTS, rtol=2e-7)  # float32 rounding: <= 6e-8.
  with jax.enable_x64(True), pytest.MonkeyPatch.context() as patch:
    patch.setattr(samplers, "_PLMS_WEIGHTS", PLMS_WEIGHTS)
    schedule = _float64_schedule(scheduler)
    ours64 = _our_trajectory("plms", steps, prediction, schedule, timestep_offset=1,
                             final_alpha_cumprod=float(schedule.alphas_cumprod[0]))
  # diffusers' first call makes the Euler half of our first (improved-Euler) step.
  worst64 = float(np.abs(ours64 - theirs64[1:]).max())
  worst32 = float(np.abs(ours32 - theirs32[1:]).max())
  print(f"PLMS[{prediction}, {steps} steps] max abs deviation {worst64:.2e} (float64), "
        f"{worst32:.2e} (float32)")
  assert worst64 <= TOLERANCE
  assert worst32 <= FLOAT32_TOLERANCE


@pytest.mark.parity
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [50, 20, 7])
def test_dpm_solver_pp_2m_matches_diffusers(prediction, steps):
  make = lambda: diffusers.DPMSolverMultistepScheduler(
      beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, solver_order=2,
      algorithm_type="dpmsolver++", solver_type="midpoint", final_sigmas_type="zero",
      prediction_type="v_prediction" if prediction == "v" else "epsilon")
  theirs32 = _their_trajectory(make(), steps)
  ours32 = _our_trajectory("dpm_solver++", steps, prediction)
  # diffusers' DPM-Solver casts its sigmas and the sample to float32 itself.
  with ref.float32_as_float64(sys.modules[diffusers.DPMSolverMultistepScheduler.__module__]):
    scheduler = make()
    theirs64 = _their_trajectory(scheduler, steps, np.float64)
  # Its betas, table and sigmas really were float64 (in float32 it ends 1e-6 .. 1e-5 away).
  assert scheduler.alphas_cumprod.dtype == scheduler.sigmas.dtype == torch.float64
  with jax.enable_x64(True):
    ours64 = _our_trajectory("dpm_solver++", steps, prediction, _float64_schedule(scheduler))
  worst64 = float(np.abs(ours64 - theirs64).max())
  worst32 = float(np.abs(ours32 - theirs32).max())
  print(f"DPM-Solver++(2M)[{prediction}, {steps} steps] max abs deviation {worst64:.2e} "
        f"(float64), {worst32:.2e} (float32)")
  assert worst64 <= TOLERANCE
  assert worst32 <= FLOAT32_TOLERANCE
