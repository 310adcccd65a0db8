"""benchmark.py's programs on tiny points (CPU): the diffusers side built with the same
architecture, FLOPs from XLA's cost analysis against analytic counts, no TensorFlow (every
JSON field: suite_test.py's dry run of benchmarks/gpu.sh). No test here asserts a time."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.benchmark import measure
from ldm_jax.benchmark import run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(arg):
  from configs import benchmark  # pylint: disable=import-outside-toplevel
  return benchmark.get_config(arg)


@pytest.mark.slow
def test_vae_step_matches_diffusers_architecture():
  config = _config("point=kl_f8,tiny")
  config.benchmark.update(measure=("vae_step",), compare="diffusers", steps=1, warmup=1)
  record = run.run(config)
  vae = record["measurements"]["vae_step"]
  assert vae["num_params"] == vae["diffusers_num_params"]
  assert vae["flops_per_step"] > 0 and vae["speedup_vs_diffusers"] > 0


def test_cost_analysis_flops_match_analytic_counts():
  """A matmul is 2 m k n FLOPs and a stride-1 'SAME' conv 2 B H W Cin Cout kh kw, whatever
  the device count (the per-device program's count times the devices)."""
  x = jnp.ones((64, 96))
  w = jnp.ones((96, 40))
  compiled, _ = measure.compile_fn(jax.jit(jnp.matmul), x, w)
  assert measure.program_flops(compiled) == pytest.approx(2 * 64 * 96 * 40, rel=0.01)

  image = jnp.ones((8, 16, 16, 12))
  kernel = jnp.ones((3, 3, 12, 20))
  conv = jax.jit(lambda a, b: jax.lax.conv_general_dilated(
      a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  # XLA counts the taps inside the image: with 'SAME' zero padding an edge output of a 3x3
  # kernel has 6 (or 4 in a corner), so the taps summed over a 16 x 16 map are (3 * 16 - 2)^2.
  expected = 2 * 8 * 12 * 20 * (3 * 16 - 2) ** 2
  compiled, _ = measure.compile_fn(conv, image, kernel)
  assert measure.program_flops(compiled) == pytest.approx(expected, rel=0.01)
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.asarray(jax.devices()), ("b",))
  sharded = jax.device_put(image, NamedSharding(mesh, P("b")))
  compiled, _ = measure.compile_fn(conv, sharded, kernel)
  assert measure.program_flops(compiled) * 8 == pytest.approx(expected, rel=0.01)


def test_peak_table_and_settings_errors():
  assert measure.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4
  assert measure.peak_tflops("TPU v5 lite", "bfloat16") == 197.0
  assert measure.peak_tflops("TPU v5p", "bfloat16") == 459.0
  assert measure.peak_tflops("cpu", "float32") is None
  config = _config("point=sd_unet_256,tiny")
  config.benchmark.measure = ("unet_step", "fid")
  with pytest.raises(ValueError, match=r"unknown \['fid'\]"):
    run.apply_settings(config)
  with pytest.raises(ValueError, match="point='sd'"):
    _config("point=sd")
  with pytest.raises(ValueError, match="sd=3"):
    _config("point=sd_unet_512,sd=3")
  config = _config("point=sd_unet_256,tiny")
  config.benchmark.batch_size = 12
  with pytest.raises(ValueError, match="batch_size=12 does not split over the mesh's 8"):
    run.run(config)


def test_importable_without_tensorflow():
  code = ("import sys, benchmark\nfrom ldm_jax.benchmark import run, jax_steps\n"
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
          "assert 'torch' not in sys.modules, 'torch imported'\n")
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-2000:]


def test_the_uvit_point_runs_the_pixel_space_programs():
  config = _config("point=uvit_256,tiny")
  assert tuple(config.benchmark.measure) == ("unet_step", "ldm_step", "sampling")
  # (unet_step is the network's part of ldm_step; sampling in pixel space is
  # tests/ldm/model_test.py's.)
  config.benchmark.update(measure=("ldm_step",), steps=1, warmup=0)
  record = run.run(config)
  assert set(record["measurements"]) == {"ldm_step"}
  for m in record["measurements"].values():
    assert m["step_time_ms"] > 0 and m["flops_per_step"] > 0 and m["num_params"] > 0
  assert record["image_size"] == 16


@pytest.mark.parametrize("point", ["sd_unet_256", "cin256", "kl_f8", "uvit_256"])
def test_full_size_points_build_the_published_architectures(point):
  """Traced, not run: Stable Diffusion v1's UNet has 859,520,964 parameters and its VAE
  83,653,863 (the published diffusers models' counts)."""
  from ldm_jax.models import factory  # pylint: disable=import-outside-toplevel
  from ldm_jax.models import networks  # pylint: disable=import-outside-toplevel
  config = run.apply_settings(_config(f"point={point}"))
  block = config.autoencoder if point == "kl_f8" else config.network
  assert block.dtype == "bfloat16"  # The benchmark's compute dtype, set on the model.
  if point == "kl_f8":
    model = factory.build_autoencoder(config.autoencoder)
    inputs = factory.autoencoder_example_inputs(config.autoencoder)
    expected = 83_653_863
  else:
    model = networks.build(config.network)
    inputs = networks.example_inputs(config.network)
    expected = 859_520_964 if point == "sd_unet_256" else None
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"]
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  if expected is not None:
    assert count == expected
  assert config.benchmark.image_size == 256 and config.benchmark.batch_size == 16
