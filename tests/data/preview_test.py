"""The preview CLI, run as a user would: digits and a folder of scikit-image photos."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import skimage.data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _preview(*args):
  result = subprocess.run([sys.executable, "-m", "ldm_jax.data", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "XLA_FLAGS": ""})
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow
def test_preview_digits(data_dir, tmp_path):
  out = tmp_path / "grid.png"
  stdout = _preview("--config=configs/digits_ldm.py:cond=caption",
                    f"--config.data.data_dir={data_dir}",
                    f"--out={out}")
  assert "dataset 'digits', split 'train': 1437 examples" in stdout
  assert "image: float32[64, 16, 16, 1]" in stdout
  assert "label counts: " in stdout and "a handwritten digit" in stdout
  grid = np.asarray(Image.open(out))
  assert grid.ndim == 2 and min(grid.shape) >= 512 and grid.std() > 20  # Real strokes.


@pytest.mark.slow
def test_preview_image_folder(tmp_path):
  folder = tmp_path / "photos"
  for name in ("astronaut", "coffee", "chelsea", "rocket"):
    folder.mkdir(exist_ok=True)
    Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.png")
  out = tmp_path / "grid.png"
  stdout = _preview(f"--config=configs/image_folder.py:folder={folder},size=96",
                    f"--config.data.data_dir={tmp_path / 'tfds'}",
                    "--config.data.batch_size=8", f"--out={out}")
  assert "split 'train': 4 examples" in stdout
  assert "image: float32[8, 96, 96, 3]" in stdout
  assert np.asarray(Image.open(out)).shape[-1] == 3
