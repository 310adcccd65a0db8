"""Our FID Inception against torch-fidelity's FeatureExtractorInceptionV3 (tf1 inputs) and
pytorch-fid's InceptionV3 (pytorch_fid inputs), with the same random weights: pool3, the
unbiased logits and the sFID tap, on images of several sizes; the weights file's checks."""

import os
from unittest import mock

import jax
import numpy as np
import pytest

from ldm_jax.convert import torch_weights
from ldm_jax.metrics import inception
from tests import references
from tests.metrics import conftest

SIZES = (32, 64, 256, 299, 512)


@pytest.fixture(scope="module")
def ours(inception_weights):
  params, info = inception.load_params(inception_weights[1])
  assert info["source_file"] == "pt_inception_random.pth" and not info["name_hash_match"]
  assert len(info["source_sha256"]) == 64
  net = jax.jit(lambda p, x: inception.InceptionV3().apply({"params": p}, x))
  prep = jax.jit(inception.preprocess, static_argnums=1)
  return lambda images, mode: jax.device_get(net(params, prep(images, mode)))


def _relative(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("size", SIZES)
def test_tf1_mode_matches_torch_fidelity(size, inception_weights, ours):
  torch = references.require("torch")
  fe = references.require("torch_fidelity.feature_extractor_inceptionv3")
  model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=inception_weights[0])
  spatial = {}
  model.Mixed_6d.branch1x1.register_forward_hook(
      lambda module, args, out: spatial.setdefault("out", out))
  images = conftest.random_images(size)
  with torch.no_grad():
    pool3, logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
  # ADM's mixed_6/conv[..., :7], flattened from NHWC.
  sfid = spatial["out"][:, :7].permute(0, 2, 3, 1).reshape(len(images), -1)
  got = ours(images, "tf1")
  errors = {name: _relative(got[name], ref.numpy()) for name, ref in
            (("pool3", pool3), ("logits_unbiased", logits), ("spatial", sfid))}
  print(f"tf1 vs torch-fidelity at {size} px: relative errors {errors}")
  assert got["spatial"].shape == (2, 17 * 17 * 7)
  assert max(errors.values()) <= 1e-4, errors


@pytest.mark.parametrize("size", SIZES)
def test_pytorch_fid_mode_matches_pytorch_fid(size, inception_weights, ours):
  torch = references.require("torch")
  references.require_torchvision()
  pf = references.require("pytorch_fid.inception")
  state = torch.load(inception_weights[0])
  # Its constructor downloads the weights: given the same random ones instead.
  with mock.patch.object(pf, "load_state_dict_from_url", lambda *a, **k: state):
    model = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  images = conftest.random_images(size)
  with torch.no_grad():
    pool3 = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)[0]
  error = _relative(ours(images, "pytorch_fid")["pool3"], pool3[:, :, 0, 0].numpy())
  print(f"pytorch_fid vs pytorch-fid at {size} px: relative error {error:.2e}")
  assert error <= 1e-4


def test_inputs_at_299_are_only_rescaled_and_the_modes_differ_elsewhere(ours):
  full = conftest.random_images(299)
  x = full.astype(np.float32)
  np.testing.assert_allclose(inception.preprocess(full, "tf1"), (x - 128) / 128, atol=1e-6)
  np.testing.assert_allclose(inception.preprocess(full, "pytorch_fid"), x / 255 * 2 - 1,
                             atol=1e-6)
  small = conftest.random_images(64)
  assert _relative(ours(small, "tf1")["pool3"], ours(small, "pytorch_fid")["pool3"]) > 1e-3


def test_grey_images_are_read_as_rgb(ours):
  grey = conftest.random_images(32)[..., :1]
  np.testing.assert_allclose(ours(grey, "tf1")["pool3"],
                             ours(np.repeat(grey, 3, axis=-1), "tf1")["pool3"], rtol=1e-6)


def test_bad_inputs_and_files(inception_weights, tmp_path):
  with pytest.raises(ValueError, match=r"dtype float32; expected uint8 images"):
    inception.preprocess(np.zeros((1, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match=r"shape \(32, 32, 3\); expected \[batch"):
    inception.preprocess(np.zeros((32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="mode='clean': expected one of"):
    inception.preprocess(np.zeros((1, 32, 32, 3), np.uint8), "clean")
  with pytest.raises(FileNotFoundError, match="python -m ldm_jax.eval.inception_convert"):
    inception.load_params(str(tmp_path / "none.npz"))
  with pytest.raises(FileExistsError, match="never written over"):
    inception.convert(*inception_weights)
  torch = references.require("torch")
  state = torch.load(inception_weights[0])
  del state["Mixed_6d.branch1x1.conv.weight"]
  state["AuxLogits.fc.weight"] = torch.zeros(3)
  wrong = str(tmp_path / "wrong.pth")
  torch.save(state, wrong)
  with pytest.raises(torch_weights.WeightMismatchError,
                     match=r"(?s)AuxLogits.fc.weight.*Mixed_6d/branch1x1/conv/kernel"):
    inception.convert(wrong, str(tmp_path / "wrong.npz"))
  assert not os.path.exists(tmp_path / "wrong.npz")
  # Our .npz: written by the converter (with the source's hash), with every parameter.
  np.savez(tmp_path / "bare.npz", x=np.zeros(2))
  with pytest.raises(ValueError, match="no __meta__/source_sha256 entry"):
    inception.load_params(str(tmp_path / "bare.npz"))
  with np.load(inception_weights[1]) as data:
    entries = {k: data[k] for k in data.files if k != "Mixed_7c/branch_pool/bn/scale"}
  np.savez(tmp_path / "short.npz", **entries)
  with pytest.raises(torch_weights.WeightMismatchError,
                     match=r"missing Mixed_7c/branch_pool/bn/scale \(192,\)"):
    inception.load_params(str(tmp_path / "short.npz"))
