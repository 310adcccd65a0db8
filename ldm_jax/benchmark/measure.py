"""Timing, FLOPs and memory of jitted functions, and model FLOPs utilisation (MFU).

Times are wall-clock medians over timed calls after warm-up, each ended by
`block_until_ready`; FLOPs come from XLA's cost analysis of the compiled program.
"""

import dataclasses
import statistics
import time
from typing import Callable

import jax
import numpy as np

# Dense peak TFLOP/s per chip (vendor figures, no sparsity), by compute dtype.
# float32 on GPUs: XLA's default matmul precision uses TF32 tensor cores.
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.4, "float32": 494.7},
    "H100": {"bfloat16": 989.4, "float32": 494.7},  # SXM.
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "TPU v4": {"bfloat16": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0},  # v5e.
    "TPU v5p": {"bfloat16": 459.0},
    "TPU v5": {"bfloat16": 459.0},
    "TPU v6 lite": {"bfloat16": 918.0},  # v6e (Trillium).
}


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The table's peak for a device kind (longest matching name), or None if unknown."""
  for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
    if name.lower() in device_kind.lower():
      return PEAK_TFLOPS[name].get(dtype)
  return None


@dataclasses.dataclass
class Timing:
  compile_time_s: float
  step_times_s: list
  flops: float | None  # Per call, the whole program over all devices.
  peak_memory_bytes: int | None

  @property
  def median_s(self) -> float:
    return statistics.median(self.step_times_s)

  @property
  def spread_s(self) -> tuple[float, float]:
    """The 10th and 90th percentiles."""
    values = np.asarray(self.step_times_s)
    return float(np.percentile(values, 10)), float(np.percentile(values, 90))


def program_flops(compiled) -> float | None:
  """FLOPs of one device's partition of a compiled program (XLA cost analysis)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  return float(analysis["flops"])


def peak_memory(devices) -> int | None:
  """The largest peak bytes in use over `devices`, where the backend reports it."""
  peaks = []
  for device in devices:
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def compile_fn(jitted, *args):
  """(compiled, seconds) for a jitted function at `args`."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def time_calls(call: Callable[[], object], count: int) -> list:
  """Seconds of each of `count` calls of `call`, each waited for to the end."""
  times = []
  for _ in range(count):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return times


def summarise(timing: Timing, *, batch: int, num_devices: int, device_kind: str,
              dtype: str) -> dict:
  """The JSON fields of one measurement."""
  median = timing.median_s
  p10, p90 = timing.spread_s
  images_per_sec = batch / median
  out = dict(step_time_ms=1e3 * median, step_time_p10_ms=1e3 * p10,
             step_time_p90_ms=1e3 * p90, timed_steps=len(timing.step_times_s),
             compile_time_s=timing.compile_time_s, images_per_sec=images_per_sec,
             images_per_sec_per_device=images_per_sec / num_devices,
             flops_per_step=timing.flops, peak_memory_bytes=timing.peak_memory_bytes)
  if timing.flops is not None:
    per_device = timing.flops / num_devices / median / 1e12
    peak = peak_tflops(device_kind, dtype)
    out.update(tflops_per_device=per_device, peak_tflops_per_device=peak,
               mfu=None if peak is None else per_device / peak)
  else:
    out.update(tflops_per_device=None, peak_tflops_per_device=None, mfu=None)
  return out
