"""Statistics files (ours, pytorch-fid's, ADM's reference batches): kinds, modes, weights and
the cache's key; no Inception here (tests/eval/fid_test.py runs them end to end)."""

import json
import os

import numpy as np
import pytest

from ldm_jax.eval import references


def _stats(mode="tf1", sha="a" * 64, pool3=True):
  rng = np.random.default_rng(0)
  features = rng.normal(size=(6, 2048))
  return references.Statistics(
      "made", mode, 6, features.mean(0), np.cov(features, rowvar=False),
      np.zeros(2023), np.eye(2023), features.astype(np.float32) if pool3 else None,
      weights_sha256=sha)


def test_ours_round_trip_and_never_overwrite(tmp_path):
  path = str(tmp_path / "s.npz")
  stats = _stats()
  references.save(path, stats, source="folder/x")
  with np.load(path) as data:  # ADM's evaluator reads these keys from a reference batch.
    assert {"mu", "sigma", "mu_s", "sigma_s", "pool3", "ldm_jax"} <= set(data.files)
    assert json.loads(str(data["ldm_jax"]))["source"] == "folder/x"
  back = references.load(path)
  assert (back.kind, back.mode, back.count, back.weights_sha256) == ("ldm_jax", "tf1", 6,
                                                                     "a" * 64)
  np.testing.assert_array_equal(back.sigma, stats.sigma)
  np.testing.assert_array_equal(back.pool3, stats.pool3)
  assert references.is_statistics_file(path)
  with pytest.raises(FileExistsError, match="never written over"):
    references.save(path, stats)
  with pytest.raises(ValueError, match="records mode 'tf1'; it cannot be declared"):
    references.load(path, declared_mode="pytorch_fid")
  assert [f for f in os.listdir(tmp_path)] == ["s.npz"]  # No temporary file left.


def test_foreign_files_and_their_modes(tmp_path):
  stats = _stats()
  np.savez(tmp_path / "pytorch_fid.npz", mu=stats.mu, sigma=stats.sigma)
  np.savez(tmp_path / "adm.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=stats.mu,
           sigma=stats.sigma, mu_s=stats.mu_s, sigma_s=stats.sigma_s)
  theirs = references.load(str(tmp_path / "pytorch_fid.npz"))
  assert (theirs.kind, theirs.mode, theirs.mu_s, theirs.weights_sha256) == (
      "pytorch_fid", "pytorch_fid", None, None)
  adm = references.load(str(tmp_path / "adm.npz"))
  assert (adm.kind, adm.mode, adm.mu_s.shape) == ("adm", "tf1", (2023,))
  assert references.load(str(tmp_path / "pytorch_fid.npz"), declared_mode="tf1").mode == "tf1"
  with pytest.raises(ValueError, match=r"mode 'pytorch_fid', the samples are read with mode "
                     r"'tf1'.*--mode=pytorch_fid \(pytorch-fid's statistics files are made"):
    references.check_comparable(_stats(), theirs)
  with pytest.raises(ValueError, match=r"sha256 bbbbbbbbbbbb\.\.\., made with aaaaaaaaaaaa"):
    references.check_comparable(_stats(), _stats(sha="b" * 64))
  references.check_comparable(_stats(), adm)  # Weights unrecorded: the same mode is enough.
  np.savez(tmp_path / "bad.npz", mu=np.zeros(64), sigma=np.eye(64))
  with pytest.raises(ValueError, match=r"mu \(64,\), sigma \(64, 64\); expected pool3's"):
    references.load(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
  assert not references.is_statistics_file(str(tmp_path / "images.npz"))


def test_cache_entries_are_keyed_by_everything_that_changes_the_numbers(tmp_path):
  base = dict(dataset="celeb_a_hq/256", split="train", image_size=256)
  path = references.cache_path(str(tmp_path), dict(base, mode="tf1"))
  assert os.path.basename(path).startswith("celeb_a_hq_256-train-256px-tf1-")
  others = [dict(base, mode="pytorch_fid"), dict(base, mode="tf1", split="test"),
            dict(base, mode="tf1", image_size=128), dict(base, mode="tf1", resize="area")]
  assert len({path, *(references.cache_path(str(tmp_path), k) for k in others)}) == 5


def test_kid_on_too_few_samples_is_listed_unless_asked_for():
  from ldm_jax.eval import fid  # pylint: disable=import-outside-toplevel
  ours, ref = _stats(), _stats()
  listed = fid.compare(ours, ref, ("kid",), kid_subset_size=1000, explicit=False)
  assert "kid_mean" not in listed
  assert "there are 6 and 6" in listed["not_computed"]["kid"]
  with pytest.raises(ValueError, match="KID: subsets of 1000 need that many samples"):
    fid.compare(ours, ref, ("kid",), kid_subset_size=1000)
  assert fid.compare(ours, ref, ("kid",), kid_subsets=3, kid_subset_size=4)["kid_std"] >= 0
