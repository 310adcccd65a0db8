"""On a GPU (benchmarks/gpu.sh runs these; skipped elsewhere): bfloat16 training steps with
attention chosen automatically (cuDNN flash) stay finite and move the parameters, for the
network's own step and the library's LDM step on precomputed latents and contexts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.benchmark import jax_steps
from ldm_jax.benchmark import run
from ldm_jax.parallel import sharding

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")]


def _config():
  from configs import benchmark  # pylint: disable=import-outside-toplevel
  config = benchmark.get_config("point=sd_unet_256,sd=2,tiny")
  # Heads of 64 channels (what cuDNN's flash kernel takes, as in SD 2) on 16x16 latents.
  config.network.update(model_channels=128, num_heads=-1, num_head_channels=64)
  config.benchmark.update(dtype="bfloat16", attention_impl="auto", batch_size=4,
                          image_size=32)
  return run.apply_settings(config)


@pytest.mark.parametrize("name", ["unet_step", "ldm_step"])
def test_bf16_steps_are_finite_and_use_cudnn(name):
  config = _config()
  mesh = sharding.create_mesh(config.get("mesh"))
  program = jax_steps.BUILDERS[name](config, mesh)
  assert "cudnn" in program.jitted.lower(*program.args).as_text()
  args = list(program.args)
  floats = lambda state: [x for x in jax.tree.leaves(state)
                          if jnp.issubdtype(x.dtype, jnp.floating)]
  before = [np.asarray(x) for x in floats(args[0])]
  for _ in range(3):
    state, metrics = program.jitted(*args)
    args[0] = state
    for leaf in jax.tree.leaves(metrics):
      assert bool(jnp.isfinite(leaf).all()), (name, metrics)
  after = floats(args[0])
  assert all(bool(jnp.isfinite(x).all()) for x in after)
  assert sum(not np.array_equal(a, b) for a, b in zip(before, after)) > len(after) // 2
