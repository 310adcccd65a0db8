"""configs/simple_diffusion.py and configs/digits_simple_diffusion.py: the full-size networks
(shapes only, nothing allocated), their schedules pinned at chosen points, the variants."""

import math

import jax
import numpy as np
import pytest

from configs import digits_simple_diffusion
from configs import simple_diffusion
from ldm_jax.diffusion import schedule_config
from ldm_jax.ldm import model as model_lib
from ldm_jax.models import factory
from ldm_jax.models import networks

# Parameter counts the config's docstring reports (millions, rounded to 0.1).
COUNTS = {("uvit", 64): 333.7, ("uvit", 128): 337.4, ("uvit", 256): 337.4,
          ("uvit", 512): 337.5, ("unet", 64): 277.2, ("unet", 128): 386.0,
          ("unet", 256): 502.2, ("unet", 512): 483.3}


def _count(config) -> float:
  block = config.network
  res = config.data.image_size
  inputs = (np.zeros((1, res, res, 3), np.float32), np.zeros((1,), np.float32), None,
            np.zeros((1,), np.int32))
  shapes = factory.param_shapes(networks.build(block), inputs)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) / 1e6


@pytest.mark.parametrize("arch,res", sorted(COUNTS))
def test_full_size_networks_build_and_have_the_documented_parameter_counts(arch, res):
  config = simple_diffusion.get_config(f"res={res},arch={arch}")
  count = _count(config)
  print(f"simple_diffusion:res={res},arch={arch}: {count:.1f}M parameters")
  assert round(count, 1) == COUNTS[arch, res]
  assert f"{COUNTS[arch, res]}M" in simple_diffusion.__doc__
  spec = networks.spec(config.network)
  assert spec.logsnr_input and spec.num_classes == 1001 and res % spec.size_multiple == 0


@pytest.mark.parametrize("res,t,expected", [
    (64, 0.5, 0.0), (128, 0.5, -2 * math.log(2)), (256, 0.5, -4 * math.log(2)),
    # Interpolated at 512: (1 - t) (cosine + 2 log(256/512)) + t (cosine + 2 log(32/512)).
    (512, 0.5, 0.5 * (2 * math.log(256 / 512) + 2 * math.log(32 / 512))),
    (128, 0.0, 15.0 - 2 * math.log(2)), (128, 1.0, -15.0 - 2 * math.log(2)),
    (512, 0.0, 15.0 + 2 * math.log(256 / 512)), (512, 1.0, -15.0 + 2 * math.log(32 / 512)),
])
def test_schedules_by_resolution_are_pinned(res, t, expected):
  config = simple_diffusion.get_config(f"res={res}")
  schedule = schedule_config.from_config(config.diffusion, image_size=res)
  assert schedule.time_input == "logsnr"
  np.testing.assert_allclose(float(schedule.logsnr_fn(t)), expected, atol=2e-4)
  # At other t: the cosine logSNR in closed form (float64), shifted.
  t_min, t_max = math.atan(math.exp(-7.5)), math.atan(math.exp(7.5))
  ts = np.linspace(0.05, 0.95, 7)
  base = -2 * np.log(np.tan(t_min + ts * (t_max - t_min)))
  if res == 512:
    want = (1 - ts) * (base + 2 * math.log(256 / 512)) + ts * (base + 2 * math.log(32 / 512))
  else:
    want = base + 2 * math.log(64 / res)
  np.testing.assert_allclose(schedule.logsnr_fn(ts), want, rtol=1e-5, atol=1e-4)


def test_loss_settings_follow_the_sources():
  for res, base in ((64, None), (128, 64), (256, 32), (512, 32)):
    block = simple_diffusion.get_config(f"res={res}").diffusion
    assert (block.prediction, block.weighting, block.multiscale_base) == ("v", "eps", base)


def test_variants_are_checked():
  with pytest.raises(ValueError, match="res=96: expected one of"):
    simple_diffusion.get_config("res=96")
  with pytest.raises(ValueError, match="arch='dit': expected one of"):
    simple_diffusion.get_config("arch=dit")
  with pytest.raises(ValueError, match="arch='dit': expected one of"):
    digits_simple_diffusion.get_config("arch=dit")


def test_a_logsnr_network_needs_a_logsnr_time_input():
  config = digits_simple_diffusion.get_config("tiny")
  config.diffusion.time_input = "t"
  with pytest.raises(ValueError, match="network.logsnr_input=True embeds the logSNR"):
    model_lib.LatentDiffusion(config)
  config.diffusion.update(time_input="logsnr", multiscale_base=3)
  with pytest.raises(ValueError, match="multiscale_base=3: the image size 16"):
    model_lib.LatentDiffusion(config)


@pytest.mark.parametrize("module,arg", [(simple_diffusion, "res=512"),
                                        (simple_diffusion, "res=64,arch=unet"),
                                        (digits_simple_diffusion, None),
                                        (digits_simple_diffusion, "arch=unet")])
def test_the_whole_training_state_traces(module, arg):
  """Model checks (logSNR input, multiscale sizes, pixels) pass and the state traces."""
  from ldm_jax.training import stages  # pylint: disable=import-outside-toplevel
  config = module.get_config(arg)
  state = jax.eval_shape(lambda key: stages.create(config).init_state(key), jax.random.key(0))
  network = state.params["model"]["network"]
  assert "class_embedding" in network and set(state.params["model"]) == {"network"}
