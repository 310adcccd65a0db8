"""Reading weight files."""

import jax
import numpy as np
import pytest

from ldm_jax.convert import files
from ldm_jax.convert import torch_weights

torch = pytest.importorskip("torch")


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
