"""`run(config)`: every measurement of `config.benchmark.measure`, timed on synthetic data;
with `benchmark.compare='diffusers'` the comparable ones also in diffusers, in rounds
alternating with ours. Returns the JSON record; `table(record)` prints it.
"""

import datetime
import platform as platform_lib

import jax
import ml_collections

from ldm_jax.benchmark import jax_steps
from ldm_jax.benchmark import measure
from ldm_jax.nn import remat as remat_lib
from ldm_jax.parallel import sharding

COMPARES = ("", "diffusers", "diffusers_compile")
ROUNDS = 4  # Alternations between ours and diffusers' timed calls (fewer with fewer steps).


def apply_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The benchmark block's dtype / remat / attention on every model block; checked."""
  bench = config.benchmark
  unknown = [m for m in bench.measure if m not in jax_steps.BUILDERS]
  if unknown:
    raise ValueError(f"benchmark.measure={tuple(bench.measure)}: unknown {unknown}; expected "
                     f"some of {tuple(jax_steps.BUILDERS)}.")
  if bench.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"benchmark.dtype={bench.dtype!r}: expected 'float32' or 'bfloat16'.")
  if bench.compare not in COMPARES:
    raise ValueError(f"benchmark.compare={bench.compare!r}: expected one of {COMPARES}.")
  remat_lib.policy_name(bench.remat)  # Checked here, before anything builds.
  if int(bench.steps) < 1 or int(bench.warmup) < 0:
    raise ValueError(f"benchmark.steps={bench.steps}, warmup={bench.warmup}: expected >= 1 "
                     f"timed steps and >= 0 warm-up steps.")
  config = config.copy_and_resolve_references()
  for name in ("network", "autoencoder"):
    block = config.get(name)
    if block is not None:
      block.update(dtype=bench.dtype, remat=bench.remat,
                   attention_impl=bench.attention_impl)
  if config.get("data") is not None:  # (autoencoder.resolution stays: it places attention.)
    config.data.image_size = int(bench.image_size)
  return config


def _measure_one(name: str, config, mesh, devices, torch_step=None) -> dict:
  bench = config.benchmark
  program = jax_steps.BUILDERS[name](config, mesh)
  compiled, compile_s = measure.compile_fn(program.jitted, *program.args)
  per_device_flops = measure.program_flops(compiled)
  args = list(program.args)

  def call():
    out = compiled(*args)
    if program.stateful:
      args[0] = out[0]
    return out

  torch_first_s, torch_error, theirs = None, None, []

  def torch_call() -> float | None:
    """One timed diffusers call; a failure there (out of memory, torch.compile) is recorded
    and ends the comparison, not our measurement."""
    nonlocal torch_step, torch_error
    if torch_step is None:
      return None
    try:
      return measure.time_calls(lambda: (torch_step.call(), torch_step.sync()), 1)[0]
    except Exception as e:  # pylint: disable=broad-except
      torch_error, torch_step = f"diffusers' step failed: {type(e).__name__}: {e}"[:500], None
      print(torch_error, flush=True)
      return None

  for _ in range(int(bench.warmup)):
    jax.block_until_ready(call())
    seconds = torch_call()
    torch_first_s = seconds if torch_first_s is None else torch_first_s
  # Rounds alternate between the two (both see the same machine state) and each side's
  # timed calls follow an untimed call of its own: on a CPU, a call timed right after the
  # other framework's ran up to 2x slower (its thread pool parked, its caches taken), which
  # call-by-call alternation charged to whichever side was short (benchmarks/RESULTS.md).
  ours, steps = [], int(bench.steps)
  rounds = min(steps, ROUNDS) if torch_step is not None else 1
  for r in range(rounds):
    count = steps // rounds + (r < steps % rounds)
    if torch_step is not None or (r == 0 and not int(bench.warmup)):
      jax.block_until_ready(call())
    ours += measure.time_calls(call, count)
    seconds = torch_call()  # Untimed (diffusers' first call when there was no warm-up).
    if seconds is not None:
      torch_first_s = seconds if torch_first_s is None else torch_first_s
      theirs += [s for s in (torch_call() for _ in range(count)) if s is not None]
  timing = measure.Timing(
      compile_s, ours, None if per_device_flops is None else per_device_flops * len(devices),
      measure.peak_memory(devices))
  batch = int(bench.batch_size)
  out = measure.summarise(timing, batch=batch, num_devices=len(devices),
                          device_kind=devices[0].device_kind, dtype=bench.dtype)
  out["num_params"] = program.num_params
  out["timing_rounds"] = rounds
  if torch_error:
    out["diffusers_note"] = torch_error
  elif torch_step is not None:
    torch_timing = measure.Timing(0.0, theirs, None, None)
    per_sec = batch / torch_timing.median_s  # One PyTorch device.
    out.update(diffusers_step_time_ms=1e3 * torch_timing.median_s,
               diffusers_images_per_sec_per_device=per_sec,
               speedup_vs_diffusers=out["images_per_sec_per_device"] / per_sec,
               diffusers_num_params=torch_step.num_params,
               diffusers_first_call_s=torch_first_s,
               diffusers_device=torch_step.device)
  return out


def _free_torch_memory() -> None:
  """Hands PyTorch's cached device memory back between measurements (when it was imported)."""
  import sys  # pylint: disable=import-outside-toplevel
  torch = sys.modules.get("torch")
  if torch is not None and torch.cuda.is_available():
    import gc  # pylint: disable=import-outside-toplevel
    gc.collect()
    torch.cuda.empty_cache()


def run(config: ml_collections.ConfigDict) -> dict:
  config = apply_settings(config)
  bench = config.benchmark
  mesh = sharding.create_mesh(config.get("mesh"))
  devices = list(mesh.devices.flat)
  if int(bench.batch_size) % len(devices):
    raise ValueError(f"benchmark.batch_size={bench.batch_size} does not split over the "
                     f"mesh's {len(devices)} devices {dict(mesh.shape)}: give a multiple of "
                     f"{len(devices)} (--batch_size) or a smaller mesh (--mesh).")
  kind, backend = devices[0].device_kind, devices[0].platform
  record = dict(
      point=bench.point, date=datetime.date.today().isoformat(), device_kind=kind,
      platform=backend, num_devices=len(devices),
      mesh={k: int(v) for k, v in mesh.shape.items()}, jax_version=jax.__version__,
      host=platform_lib.node(), batch_size=int(bench.batch_size),
      image_size=int(bench.image_size), dtype=bench.dtype, remat=bench.remat,
      attention_impl=bench.attention_impl, timed_steps=int(bench.steps),
      warmup_steps=int(bench.warmup), sampling_steps=int(bench.sampling_steps),
      compare=bench.compare or None, measurements={})
  if measure.peak_tflops(kind, bench.dtype) is None:
    record["mfu_note"] = (f"no peak FLOP/s known for {kind!r} at {bench.dtype}: MFU not "
                          f"reported (known: {sorted(measure.PEAK_TFLOPS)}).")
  for name in bench.measure:
    torch_step, note = None, None
    if bench.compare:
      from ldm_jax.benchmark import torch_steps  # pylint: disable=import-outside-toplevel
      if name not in torch_steps.BUILDERS:
        note = f"no diffusers counterpart of {name}"
      else:
        try:
          torch_step = torch_steps.BUILDERS[name](config, backend,
                                                  compile=bench.compare == "diffusers_compile")
        except torch_steps.NotComparable as e:
          note = str(e)
    record["measurements"][name] = _measure_one(name, config, mesh, devices, torch_step)
    if note:
      record["measurements"][name]["diffusers_note"] = note
    del torch_step
    _free_torch_memory()
  first = record["measurements"][bench.measure[0]]
  for key in ("images_per_sec_per_device", "step_time_ms", "compile_time_s",
              "tflops_per_device", "mfu", "speedup_vs_diffusers"):
    record[key] = first.get(key)  # The headline: the first measurement.
  return record


def _fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def table(record: dict) -> str:
  head = (f"{record['point']}: {record['num_devices']} x {record['device_kind']} "
          f"({record['platform']}), batch {record['batch_size']}, {record['image_size']} px, "
          f"{record['dtype']}, remat {record['remat']}, attention {record['attention_impl']}")
  rows = [head, f"{'measurement':<17}{'step ms':>10}{'p10-p90 ms':>16}{'img/s/dev':>11}"
          f"{'compile s':>11}{'TFLOP/s/dev':>13}{'MFU':>7}{'diffusers img/s':>17}"
          f"{'speedup':>9}"]
  for name, m in record["measurements"].items():
    rows.append(
        f"{name:<17}{m['step_time_ms']:>10.1f}"
        f"{m['step_time_p10_ms']:>8.1f}-{m['step_time_p90_ms']:<7.1f}"
        f"{m['images_per_sec_per_device']:>11.2f}{m['compile_time_s']:>11.1f}"
        f"{_fmt(m['tflops_per_device'], '.3f'):>13}"
        f"{_fmt(None if m['mfu'] is None else 100 * m['mfu'], '.1f'):>7}"
        f"{_fmt(m.get('diffusers_images_per_sec_per_device'), '.2f'):>17}"
        f"{_fmt(m.get('speedup_vs_diffusers'), '.2f'):>9}")
  if record.get("mfu_note"):
    rows.append(record["mfu_note"])
  return "\n".join(rows)
