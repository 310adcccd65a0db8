"""benchmarks/gpu.sh's driver: a plan of benchmark.py runs and GPU checks, each in its own
process under a time limit, within one overall budget, written as one JSON file of records
and one dated Markdown section for benchmarks/RESULTS.md.

  python -m ldm_jax.benchmark.suite --plan=gpu --out=DIR [--budget_s=540] [--results=FILE]

Entries run in the plan's order (most wanted first); one that fails or runs out of time is
recorded as such and the next one starts; entries that no longer fit the budget are skipped
(recorded too). `--plan=dry` runs the same code paths on tiny points (the CPU test of
gpu.sh). Nothing here imports JAX: the children do.
"""

import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  args: tuple  # benchmark.py's flags, or for kind='tests' pytest's arguments.
  timeout_s: int  # Its own limit.
  min_s: int  # Skipped when less than this is left of the budget.
  kind: str = "benchmark"  # Or 'tests'.
  # Flags added for one more try after a failure (out of memory: remat; a cuDNN attention
  # error: XLA's), when the budget still holds min_s.
  fallback: tuple = ()


def _bench(name, point, *flags_, timeout_s, min_s, fallback=()):
  return Entry(name, (f"--config=configs/benchmark.py:{point}", *flags_), timeout_s, min_s,
               fallback=fallback)


_FALLBACK = ("--remat=full", "--attention_impl=xla")


_GPU_TESTS = ("-m", "gpu", "tests/nn/attention_test.py", "tests/benchmark/gpu_test.py")
_SD = ("--compare=diffusers", "--steps=10", "--warmup=2")

PLANS = {
    # Most wanted first: MLPerf's SD2 UNet step at 512 px (batch 32) against diffusers, the
    # 256 px step, guided DDIM-50 sampling, the VAE, then the LDM-paper and U-ViT points, the
    # library's own step on precomputed latents, and torch.compile last (slow to compile).
    "gpu": (
        Entry("gpu_tests", _GPU_TESTS, 120, 30, kind="tests"),
        _bench("sd2_512_unet_step", "point=sd_unet_512,sd=2", "--batch_size=32",
               "--measure=unet_step", *_SD, timeout_s=200, min_s=90, fallback=_FALLBACK),
        _bench("sd2_256_unet_step", "point=sd_unet_256,sd=2", "--batch_size=64",
               "--measure=unet_step", *_SD, timeout_s=160, min_s=80, fallback=_FALLBACK),
        _bench("sd2_512_sampling", "point=sd_unet_512,sd=2", "--batch_size=8",
               "--measure=sampling", "--sampling_steps=50", "--guidance_scale=7.5",
               "--compare=diffusers", "--steps=2", "--warmup=0", timeout_s=150, min_s=70),
        _bench("sd_vae_512", "point=kl_f8", "--batch_size=8", "--image_size=512",
               "--measure=vae_encode,vae_decode", *_SD, timeout_s=100, min_s=40),
        _bench("cin256_unet_step", "point=cin256", "--batch_size=64",
               "--measure=unet_step,ldm_step", "--compare=diffusers", "--steps=10",
               timeout_s=150, min_s=60),
        _bench("sd2_512_ldm_step", "point=sd_unet_512,sd=2", "--batch_size=32",
               "--measure=ldm_step", "--steps=10", timeout_s=200, min_s=90),
        _bench("uvit_256_unet_step", "point=uvit_256", "--batch_size=32",
               "--measure=unet_step", "--steps=10", timeout_s=150, min_s=60),
        _bench("sd2_512_unet_step_compile", "point=sd_unet_512,sd=2", "--batch_size=32",
               "--measure=unet_step", "--compare=diffusers_compile", "--steps=10",
               "--warmup=2", timeout_s=300, min_s=150),
    ),
    # The same code paths on tiny points, on any machine (tests/benchmark/suite_test.py).
    "dry": (
        Entry("gpu_tests", _GPU_TESTS, 120, 10, kind="tests"),
        _bench("sd2_unet_step", "point=sd_unet_512,sd=2,tiny", "--batch_size=8",
               "--measure=unet_step,sampling", "--sampling_steps=2", "--guidance_scale=7.5",
               "--compare=diffusers", "--steps=1", "--warmup=0", timeout_s=240, min_s=10),
        _bench("sd_vae", "point=kl_f8,tiny", "--batch_size=8",
               "--measure=vae_encode,vae_decode", "--compare=diffusers", "--steps=1",
               "--warmup=0", timeout_s=240, min_s=10),
        _bench("celebahq256", "point=celebahq256,tiny", "--batch_size=8",
               "--measure=unet_step,ldm_step", "--compare=diffusers", "--steps=2",
               "--warmup=0", timeout_s=240, min_s=10),  # Two rounds.
    ),
}


def _environment() -> dict:
  """Versions of what the children import, read without importing JAX here."""
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  versions = {}
  for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
               "orbax-checkpoint", "torch", "diffusers", "numpy"):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  env = {"python": platform.python_version(), "host": platform.node(), "versions": versions}
  try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=30, check=True)
    env["nvidia_smi"] = smi.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    env["nvidia_smi"] = None
  return env


def _run(entry: Entry, timeout_s: float, log, scratch: str, extra=()) -> dict:
  """Runs one entry; its record (status, seconds, and the benchmark's JSON record)."""
  out = {"name": entry.name, "kind": entry.kind, "args": list(entry.args) + list(extra)}
  if entry.kind == "tests":
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *entry.args]
  else:
    path = os.path.join(scratch, entry.name + ".json")
    command = [sys.executable, os.path.join(_ROOT, "benchmark.py"), *entry.args, *extra,
               f"--json={path}"]
  log.write(f"\n=== {entry.name} (limit {timeout_s:.0f} s): {' '.join(command)}\n")
  log.flush()
  start = time.perf_counter()
  try:
    proc = subprocess.run(command, cwd=_ROOT, stdout=log, stderr=subprocess.STDOUT,
                          timeout=timeout_s, check=False)
    out["status"] = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
  except subprocess.TimeoutExpired:
    out["status"] = f"timed out after {timeout_s:.0f} s"
  out["seconds"] = round(time.perf_counter() - start, 1)
  if entry.kind == "benchmark" and os.path.isfile(path):
    with open(path) as f:
      out["record"] = json.load(f)
  return out


def run_plan(plan: str, out_dir: str, budget_s: float, only=None) -> dict:
  """Runs `plan` into out_dir (records.json, suite.log, section.md); returns the summary."""
  if plan not in PLANS:
    raise ValueError(f"--plan={plan!r}: expected one of {sorted(PLANS)}.")
  entries = [e for e in PLANS[plan] if not only or e.name in only]
  if only and len(entries) != len(set(only)):
    known = [e.name for e in PLANS[plan]]
    raise ValueError(f"--only={sorted(only)}: plan {plan!r} has entries {known}.")
  os.makedirs(out_dir, exist_ok=True)
  for name in ("records.json", "section.md"):
    if os.path.exists(os.path.join(out_dir, name)):
      raise FileExistsError(f"{os.path.join(out_dir, name)} exists: the suite never writes "
                            f"over an earlier run's results. Choose another --out.")
  summary = {"plan": plan, "date": datetime.date.today().isoformat(),
             "budget_s": budget_s, "environment": _environment(), "entries": []}
  deadline = time.perf_counter() + budget_s
  with open(os.path.join(out_dir, "suite.log"), "a") as log, \
      tempfile.TemporaryDirectory() as scratch:
    for entry in entries:
      left = deadline - time.perf_counter()
      if left < entry.min_s:
        summary["entries"].append({"name": entry.name, "kind": entry.kind,
                                   "status": f"skipped ({left:.0f} s of the budget left, "
                                             f"needs {entry.min_s})"})
        continue
      result = _run(entry, min(entry.timeout_s, left), log, scratch)
      print(f"{entry.name}: {result['status']} in {result['seconds']} s", flush=True)
      left = deadline - time.perf_counter()
      if result["status"] != "ok" and entry.fallback and left >= entry.min_s:
        first = result
        result = _run(entry, min(entry.timeout_s, left), log, scratch, entry.fallback)
        result["first_try"] = first["status"]
        print(f"{entry.name} {' '.join(entry.fallback)}: {result['status']} in "
              f"{result['seconds']} s", flush=True)
      summary["entries"].append(result)
  summary["seconds"] = round(budget_s - (deadline - time.perf_counter()), 1)
  with open(os.path.join(out_dir, "records.json"), "w") as f:
    json.dump(summary, f, indent=1)
  with open(os.path.join(out_dir, "section.md"), "w") as f:
    f.write(section(summary))
  return summary


def _fmt(value, spec: str, scale: float = 1.0) -> str:
  return "-" if value is None else format(value * scale, spec)


def section(summary: dict) -> str:
  """The dated Markdown section for benchmarks/RESULTS.md."""
  env = summary["environment"]
  device = env.get("nvidia_smi") or "no nvidia-smi"
  versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
  lines = [f"## {summary['plan']} plan, {summary['date']}: {device}", "",
           f"`benchmarks/gpu.sh` ({summary['seconds']} s of a {summary['budget_s']:.0f} s "
           f"budget). Python {env['python']}; {versions}.", "",
           "| entry | measurement | batch | px | attention | step ms (p10-p90) | img/s/dev "
           "| TFLOP/s/dev | MFU | compile s | peak GiB | diffusers img/s | speedup |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  notes = []
  for entry in summary["entries"]:
    record = entry.get("record")
    if entry["kind"] == "tests" or record is None:
      notes.append(f"- {entry['name']}: {entry['status']}"
                   + (f" ({entry['seconds']} s)" if "seconds" in entry else ""))
      continue
    if entry["status"] != "ok":
      notes.append(f"- {entry['name']}: {entry['status']}")
    if entry.get("first_try"):
      notes.append(f"- {entry['name']}: first try {entry['first_try']}; this row is the "
                   f"retry with {' '.join(entry['args'][-len(_FALLBACK):])}")
    for name, m in record["measurements"].items():
      peak = m.get("peak_memory_bytes")
      lines.append(
          f"| {entry['name']} | {name} | {record['batch_size']} | {record['image_size']} "
          f"| {record['attention_impl']} | {m['step_time_ms']:.1f} "
          f"({m['step_time_p10_ms']:.1f}-{m['step_time_p90_ms']:.1f}) "
          f"| {m['images_per_sec_per_device']:.2f} | {_fmt(m['tflops_per_device'], '.1f')} "
          f"| {_fmt(m['mfu'], '.1f', 100.0)}{'%' if m['mfu'] is not None else ''} "
          f"| {m['compile_time_s']:.1f} | {_fmt(peak, '.1f', 2.0 ** -30)} "
          f"| {_fmt(m.get('diffusers_images_per_sec_per_device'), '.2f')} "
          f"| {_fmt(m.get('speedup_vs_diffusers'), '.2f')} |")
      if m.get("diffusers_note"):
        notes.append(f"- {entry['name']} {name}: {m['diffusers_note']}")
  return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


FLAGS = flags.FLAGS
flags.DEFINE_enum("plan", "gpu", sorted(PLANS), "Which plan.")
flags.DEFINE_string("out", None, "Folder for records.json, section.md and suite.log.")
flags.DEFINE_float("budget_s", 540.0, "The whole plan's time budget in seconds.")
flags.DEFINE_list("only", None, "Run only these entries of the plan.")
flags.DEFINE_string("results", None, "Also append the section to this Markdown file.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.out:
    raise app.UsageError("--out=DIR is required.")
  summary = run_plan(FLAGS.plan, FLAGS.out, FLAGS.budget_s, FLAGS.only)
  text = section(summary)
  print(text)
  if FLAGS.results:
    with open(FLAGS.results, "a") as f:
      f.write("\n" + text)
    print(f"appended to {FLAGS.results}")
  failed = [e["name"] for e in summary["entries"] if e["status"] != "ok"
            and not e["status"].startswith("skipped")]
  if failed:
    print(f"failed: {failed} (see {os.path.join(FLAGS.out, 'suite.log')})")
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
