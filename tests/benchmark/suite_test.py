"""benchmarks/gpu.sh's CPU dry run (PLAN=dry: the GPU plan's code paths on tiny points):
every entry runs, each benchmark record carries every field, the Markdown section is
written and appended, and an earlier run's results are never written over. No test here
asserts a time."""

import json
import os
import subprocess

import pytest

from ldm_jax.benchmark import suite
from tests import subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = ("images_per_sec_per_device", "step_time_ms", "compile_time_s", "tflops_per_device",
          "mfu", "device_kind", "num_devices", "batch_size", "image_size", "dtype", "remat",
          "attention_impl", "mesh", "speedup_vs_diffusers", "jax_version", "date")


@pytest.mark.slow
def test_gpu_sh_dry_run(tmp_path):
  results = tmp_path / "RESULTS.md"
  results.write_text("# Benchmark results\n")
  out = tmp_path / "run"
  # (One CPU device per child, as on one GPU: the tests' 8 are dropped.)
  env = subprocesses.environment(PLAN="dry", RESULTS=str(results),
                                 WHEELS=str(tmp_path / "none"), PYTHON=os.sys.executable,
                                 BUDGET_S="600")
  done = subprocess.run(["bash", "benchmarks/gpu.sh", str(out)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  summary = json.loads((out / "records.json").read_text())
  assert [e["name"] for e in summary["entries"]] == [e.name for e in suite.PLANS["dry"]]
  assert all(e["status"] == "ok" for e in summary["entries"]), summary["entries"]
  assert summary["environment"]["versions"]["jax"]
  records = {e["name"]: e["record"] for e in summary["entries"] if e["kind"] == "benchmark"}
  for name, record in records.items():
    for field in FIELDS:
      assert field in record, (name, field)
    assert record["mfu"] is None and "MFU not reported" in record["mfu_note"]
    for m in record["measurements"].values():
      assert m["step_time_ms"] > 0 and m["flops_per_step"] > 0
      assert m["step_time_p10_ms"] <= m["step_time_ms"] <= m["step_time_p90_ms"]
      if "diffusers_num_params" in m:  # The same architecture on both sides.
        assert m["num_params"] == m["diffusers_num_params"], name
        assert m["speedup_vs_diffusers"] > 0
  assert set(records["sd2_unet_step"]["measurements"]) == {"unet_step", "sampling"}
  assert set(records["sd_vae"]["measurements"]) == {"vae_encode", "vae_decode"}
  celeba = records["celebahq256"]["measurements"]
  assert "speedup_vs_diffusers" in celeba["unet_step"]  # diffusers' UNet2DModel.
  assert celeba["ldm_step"]["diffusers_note"] == "no diffusers counterpart of ldm_step"
  section = (out / "section.md").read_text()
  rows = [line for line in section.splitlines() if line.startswith("| sd")
          or line.startswith("| celebahq")]
  assert len(rows) == 6, section
  assert section in results.read_text() and "## dry plan" in section
  assert os.path.isfile(out / "suite.log")
  with pytest.raises(FileExistsError, match="never writes over"):
    suite.run_plan("dry", str(out), 60.0)


def test_plan_and_entry_errors(tmp_path):
  with pytest.raises(ValueError, match="--plan='tpu'"):
    suite.run_plan("tpu", str(tmp_path), 60.0)
  with pytest.raises(ValueError, match="has entries"):
    suite.run_plan("dry", str(tmp_path), 60.0, only=["sd_unet"])


def test_section_reports_failures_skips_and_retries():
  measurement = dict(step_time_ms=250.0, step_time_p10_ms=240.0, step_time_p90_ms=260.0,
                     images_per_sec_per_device=128.0, tflops_per_device=400.0, mfu=0.404,
                     compile_time_s=61.0, peak_memory_bytes=40 * 2 ** 30,
                     diffusers_images_per_sec_per_device=100.0, speedup_vs_diffusers=1.28)
  record = dict(batch_size=32, image_size=512, attention_impl="auto",
                measurements={"unet_step": measurement})
  summary = dict(plan="gpu", date="2026-12-04", budget_s=540.0, seconds=530.0,
                 environment=dict(python="3.12.3", versions={"jax": "0.11.2"},
                                  nvidia_smi="NVIDIA H200, 580.1, 143771 MiB"),
                 entries=[dict(name="gpu_tests", kind="tests", status="ok", seconds=40.0),
                          dict(name="sd2_512_unet_step", kind="benchmark", status="ok",
                               first_try="failed (exit 1)", record=record,
                               args=["--batch_size=32", *suite._FALLBACK]),  # pylint: disable=protected-access
                          dict(name="uvit", kind="benchmark",
                               status="skipped (12 s of the budget left, needs 60)")])
  text = suite.section(summary)
  assert "## gpu plan, 2026-12-04: NVIDIA H200" in text and "jax 0.11.2" in text
  assert ("| sd2_512_unet_step | unet_step | 32 | 512 | auto | 250.0 (240.0-260.0) | 128.00 "
          "| 400.0 | 40.4% | 61.0 | 40.0 | 100.00 | 1.28 |") in text
  assert "first try failed (exit 1); this row is the retry with --remat=full" in text
  assert "- uvit: skipped (12 s of the budget left, needs 60)" in text
  assert "- gpu_tests: ok (40.0 s)" in text
