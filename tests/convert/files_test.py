"""Reading weight files."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ldm_jax.convert import files
from ldm_jax.convert import torch_weights
from tests import references

torch = references.require("torch")


def test_bfloat16_safetensors_and_lightning_ckpt(tmp_path):
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  weight = torch.linspace(-2, 2, 12).reshape(3, 4)
  save_file({"w": weight.to(torch.bfloat16)}, str(tmp_path / "w.safetensors"))
  read = files.read_file(str(tmp_path / "w.safetensors"))
  target = {"layer": {"kernel": jax.ShapeDtypeStruct((4, 3), np.float32)}}
  params = torch_weights.to_flax({"layer.weight": read["w"]}, target)
  assert params["layer"]["kernel"].dtype == np.float32
  np.testing.assert_array_equal(params["layer"]["kernel"],
                                weight.to(torch.bfloat16).float().numpy().T)
  torch.save({"state_dict": {"w": weight}, "epoch": 3}, str(tmp_path / "w.ckpt"))
  assert list(files.read_file(str(tmp_path / "w.ckpt"))) == ["w"]


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="No weights file"):
    files.read_file(str(tmp_path / "missing.ckpt"))
  (tmp_path / "w.h5").write_bytes(b"")
  with pytest.raises(ValueError, match="expected a .safetensors"):
    files.read_file(str(tmp_path / "w.h5"))
  with pytest.raises(FileNotFoundError, match="no config.json"):
    files.read_folder(str(tmp_path))


def _truncate(path, keep):
  with open(path, "r+b") as f:
    f.truncate(keep)


def test_damaged_files_are_named(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  weights = {"a": np.ones((64, 64), np.float32), "b": np.zeros((8,), np.float16)}
  safetensors_path = str(tmp_path / "w.safetensors")
  save_file(weights, safetensors_path)
  size = os.path.getsize(safetensors_path)
  _truncate(safetensors_path, size - 100)  # The data cut short.
  with pytest.raises(files.UnreadableWeightsError,
                     match=rf"w\.safetensors \({size - 100:,} bytes\) cannot be read: "
                     rf"truncated: its header needs {size:,} bytes"):
    files.read_file(safetensors_path)
  _truncate(safetensors_path, 20)  # The header cut short.
  with pytest.raises(files.UnreadableWeightsError, match=r"w\.safetensors .*header claims"):
    files.read_file(safetensors_path)
  (tmp_path / "text.safetensors").write_text("not weights at all, but long enough")
  with pytest.raises(files.UnreadableWeightsError, match="text.safetensors .*not a "
                     "safetensors file"):
    files.read_file(str(tmp_path / "text.safetensors"))

  ckpt = str(tmp_path / "w.ckpt")
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in weights.items()}}, ckpt)
  _truncate(ckpt, os.path.getsize(ckpt) // 2)
  with pytest.raises(files.UnreadableWeightsError, match=r"w\.ckpt .*truncated"):
    files.read_file(ckpt)
  (tmp_path / "html.ckpt").write_text("<html>a login page saved by mistake</html>")
  with pytest.raises(files.UnreadableWeightsError, match="html.ckpt .*not a PyTorch "
                     "checkpoint"):
    files.read_file(str(tmp_path / "html.ckpt"))


def test_convert_cli_names_a_truncated_file(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "broken.safetensors")
  save_file({"a": np.ones((256,), np.float32)}, path)
  _truncate(path, os.path.getsize(path) - 1)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  done = subprocess.run([sys.executable, "-m", "ldm_jax.convert", path,
                         "--config=configs/architectures.py:sd_kl_f8",
                         f"--out={tmp_path / 'out'}"], cwd=root, capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 1, done.stderr[-2000:]
  assert f"error: {path} (" in done.stderr and "truncated" in done.stderr
  assert "Traceback" not in done.stderr
  assert not os.path.exists(tmp_path / "out")  # Nothing written.
