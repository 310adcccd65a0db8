"""Classifier-free guidance: one batched call; guidance rescale against diffusers."""

import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.diffusion import guidance
from tests import references


def _model(x, t, context):
  """A conditional stand-in: output depends on x, t and the context."""
  return 0.5 * x + context[:, None, None, :] * (1.0 + 0.001 * t[:, None, None, None])


def test_cfg_combines_one_batched_call():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
  t = np.array([10, 500])
  cond, uncond = rng.standard_normal((2, 2, 3)).astype(np.float32)
  calls = []
  counting = lambda x, t, c: calls.append(x.shape[0]) or _model(x, t, c)
  out = guidance.cfg_model_fn(counting, scale=7.5)(x, t, cond, uncond)
  expected = _model(x, t, uncond) + 7.5 * (_model(x, t, cond) - _model(x, t, uncond))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  assert calls == [4]  # cond and uncond together.
  np.testing.assert_allclose(guidance.cfg_model_fn(_model, 1.0)(x, t, cond, uncond),
                             _model(x, t, cond))


@pytest.mark.parity
def test_guidance_rescale_matches_diffusers():
  torch = references.require("torch")
  pipeline = references.require("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
  rng = np.random.default_rng(1)
  scales = np.array([3.0, 1.0], np.float32)[:, None, None, None, None]
  guided, conditional = rng.standard_normal((2, 2, 4, 8, 8)).astype(np.float32) * scales
  theirs = pipeline.rescale_noise_cfg(torch.from_numpy(guided), torch.from_numpy(conditional),
                                      guidance_rescale=0.7).numpy()
  ours = guidance.rescale_guidance(jnp.asarray(guided), jnp.asarray(conditional), 0.7)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
