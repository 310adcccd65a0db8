"""sample.py and the Colab notebook, run as a user runs them, on tiny one-step checkpoints."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ldm_jax.sampling import files
from tests import references

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sample_py(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600, check=False)


def test_sample_py_writes_pngs_grid_npz_and_settings(tiny_run, tmp_path):
  out = tmp_path / "threes"
  done = _sample_py(f"--workdir={tiny_run('digits_ldm:tiny')}", "--class_label=3",
                    "--num_samples=16", "--steps=2", f"--out={out}")
  assert done.returncode == 0, done.stderr[-3000:]
  names = sorted(os.listdir(out))
  assert names == [f"{i:05d}.png" for i in range(16)] + ["grid.png", "samples.npz",
                                                        "settings.json"]
  with Image.open(out / "00000.png") as first:
    assert first.size == (16, 16) and first.mode == "L"
  with Image.open(out / "grid.png") as grid:
    assert grid.size == (4 * 18, 4 * 18)
  stored = np.load(out / "samples.npz")
  assert stored["images"].shape == (16, 16, 16, 1) and list(stored["conditions"]) == [3] * 16
  with Image.open(out / "00007.png") as seventh:
    np.testing.assert_array_equal(np.asarray(seventh), stored["images"][7, ..., 0])
  settings = json.loads((out / "settings.json").read_text())
  assert settings["sampler"] == "ddim" and settings["steps"] == 2 and settings["seed"] == 0
  assert settings["mode"] == "class" and settings["step"] == 1

  # The same errors sample.py raises, in-process (before anything loads or compiles).
  with pytest.raises(FileExistsError, match="exists and is not empty"):
    files.run(out=str(out), workdir=tiny_run("digits_ldm:tiny"))
  assert len(os.listdir(out)) == 19  # Nothing was written over.
  with pytest.raises(FileNotFoundError, match="has no checkpoints/ folder"):
    files.run(out=str(tmp_path / "x"), workdir=str(tmp_path / "nothing"))


def test_inpainting_from_png_files(tiny_run, tmp_path):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
  mask = np.zeros((16, 16), np.uint8)
  mask[3:10, 5:14] = 255
  Image.fromarray(image).save(tmp_path / "image.png")
  Image.fromarray(mask).save(tmp_path / "mask.png")
  result = files.run(out=str(tmp_path / "out"), workdir=tiny_run("ldm_inpainting:tiny"),
                     image=str(tmp_path / "image.png"), mask=str(tmp_path / "mask.png"),
                     num_samples=8, progress=False)
  keep = mask == 0
  np.testing.assert_array_equal(result.images[:, keep], np.stack([image[keep]] * 8))
  settings = json.loads((tmp_path / "out" / "settings.json").read_text())
  assert settings["inputs"]["mask"] == str(tmp_path / "mask.png")
  Image.fromarray(mask[:, :12]).save(tmp_path / "small_mask.png")
  with pytest.raises(ValueError, match="mask: shape"):
    files.run(out=str(tmp_path / "out2"), workdir=tiny_run("ldm_inpainting:tiny"),
              image=str(tmp_path / "image.png"), mask=str(tmp_path / "small_mask.png"))
  assert not (tmp_path / "out2").exists()


def test_colab_notebook_runs_headless(tiny_run, tmp_path):
  """Both sections: a training run's samples, and a tiny Stable-Diffusion-shaped diffusers
  pipeline (random weights) converted by the CLI and sampled from prompts."""
  nbclient = references.require("nbclient")
  nbformat = references.require("nbformat")
  from tests.convert import pipeline_test  # pylint: disable=import-outside-toplevel
  clip_dir = references.write_clip_vocab(tmp_path)
  pipeline_test.diffusers_pipeline("sd1", clip_dir).save_pretrained(
      str(tmp_path / "sd"), safe_serialization=True)
  notebook = nbformat.read(os.path.join(ROOT, "notebooks", "sample_colab.ipynb"),
                           as_version=4)
  env = {"LDM_JAX_CHECKPOINT": tiny_run("digits_ldm:tiny"), "LDM_JAX_NUM_SAMPLES": "10",
         "LDM_JAX_STEPS": "2", "LDM_JAX_TEXT_TO_IMAGE": str(tmp_path / "converted"),
         "LDM_JAX_CONVERT_PIPELINE_FROM": str(tmp_path / "sd"), "LDM_JAX_HEIGHT": "32",
         "LDM_JAX_WIDTH": "48", "LDM_JAX_T2I_STEPS": "2"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # The kernel inherits them.
  try:
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}}).execute()
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)  # The grid, shown inline.
  text = "".join(o.get("text", "") for o in outputs)
  assert "conditioning 'class', 10 classes" in text and "(10, 16, 16, 1)" in text
  assert "'frozen_text', eps-prediction" in text and "(2, 32, 48, 3) dpm_solver++" in text
  assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
