"""`python -m ldm_jax.eval.fid` end to end on small image sets, against torch-fidelity's
calculate_metrics and pytorch-fid on the same images and random Inception weights; sets read
from folders, .npz files, TFDS splits and statistics files; 8 devices = 1 = 2 processes."""

import json
import os
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest
from PIL import Image

from ldm_jax import visualize
from ldm_jax.eval import features
from ldm_jax.eval import fid
from ldm_jax.eval import image_sets
from ldm_jax.eval import references as statistics
from ldm_jax.metrics import inception
from tests import references
from tests import subprocesses
from tests.metrics import conftest as metrics_fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
inception_weights = metrics_fixtures.inception_weights  # The shared fixture.
KID = dict(kid_subsets=5, kid_subset_size=12)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
  """Folders of PNGs: 16 'samples' (48 px) and 20 'reference' images, a little apart."""
  root = tmp_path_factory.mktemp("sets")
  out = {}
  for name, count, seed, shift in (("samples", 16, 1, 25), ("reference", 20, 2, 0)):
    images = metrics_fixtures.random_images(48, count, seed)
    images = np.clip(images.astype(int) + shift, 0, 255).astype(np.uint8)
    folder = root / name
    folder.mkdir()
    for i, image in enumerate(images):
      Image.fromarray(image).save(folder / f"{i:03d}.png")
    np.savez(root / f"{name}.npz", arr_0=images)
    out[name] = str(folder)
  return out


def test_metrics_equal_torch_fidelity(sets, inception_weights, tmp_path):
  torch_fidelity = references.require("torch_fidelity")
  theirs = torch_fidelity.calculate_metrics(
      input1=sets["samples"], input2=sets["reference"], cuda=False, isc=True, fid=True,
      kid=True, prc=True, feature_extractor="inception-v3-compat",
      feature_extractor_weights_path=inception_weights[0], cache=False, verbose=False,
      save_cpu_ram=True, batch_size=16, **KID)
  out = tmp_path / "result.json"
  done = subprocess.run(
      [sys.executable, "-m", "ldm_jax.eval.fid", f"--samples={sets['samples']}",
       # The folder torch-fidelity reads, as an .npz of the same (lossless) images.
       f"--reference={sets['reference']}.npz", f"--weights={inception_weights[1]}",
       f"--out={out}", "--batch_size=16", "--kid_subsets=5", "--kid_subset_size=12",
       "--fid_method=eigvals"],  # torch-fidelity 0.4.0's (these few samples: see below).
      cwd=ROOT, capture_output=True, text=True, timeout=600, env=subprocesses.environment(),
      check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  ours = json.loads(out.read_text())
  pairs = {"fid": "frechet_inception_distance", "isc_mean": "inception_score_mean",
           "isc_std": "inception_score_std", "kid_mean": "kernel_inception_distance_mean",
           "kid_std": "kernel_inception_distance_std", "precision": "precision",
           "recall": "recall"}
  errors = {k: abs(ours[k] - theirs[v]) / max(abs(theirs[v]), 1e-12) for k, v in pairs.items()}
  print(f"ours {ours}\ntorch-fidelity {theirs}\nrelative differences {errors}")
  assert max(errors.values()) <= 1e-3, errors
  assert ours["mode"] == "tf1" and ours["num_samples"] == 16 and ours["num_reference"] == 20
  assert ours["fid_method"] == "eigvals"
  assert len(ours["weights_sha256"]) == 64 and ours["weights_name_hash_match"] is False
  assert 0 < ours["precision"] <= 1 and ours["fid"] > 0 and ours["sfid"] > 0
  assert "strongly biased" in done.stderr  # 16 samples: the warning is given.


def test_pytorch_fid_mode_statistics_equal_pytorch_fid(sets, inception_weights):
  """pytorch-fid's own FID needs more samples than pool3 has dimensions (2048; with fewer,
  its square root has an imaginary part and it raises, as ours does with fid_method='sqrtm'):
  its statistics are compared here, its formula in tests/metrics/generative_test.py."""
  torch = references.require("torch")
  references.require_torchvision()
  inception_module = references.require("pytorch_fid.inception")
  fid_score = references.require("pytorch_fid.fid_score")
  state = torch.load(inception_weights[0])
  with mock.patch.object(inception_module, "load_state_dict_from_url",
                         lambda *a, **k: state):
    model = inception_module.InceptionV3([inception_module.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    files = sorted(os.path.join(sets["samples"], f) for f in os.listdir(sets["samples"]))
    mu, sigma = fid_score.calculate_activation_statistics(files, model.eval(), 16, 2048, "cpu",
                                                          num_workers=0)
  params, _ = inception.load_params(inception_weights[1])
  ours = features.extract(image_sets.open_images(sets["samples"]),
                          features.Extractor(params, "pytorch_fid", batch_size=16))
  our_mu, our_sigma = ours.pool3.mean_and_covariance()
  scale = np.abs(sigma).max()
  print(f"pytorch_fid mode vs pytorch-fid: mean {np.abs(our_mu - mu).max() / np.abs(mu).max():.2e}"
        f", covariance {np.abs(our_sigma - sigma).max() / scale:.2e} relative")
  np.testing.assert_allclose(our_mu, mu, rtol=0, atol=1e-4 * np.abs(mu).max())
  np.testing.assert_allclose(our_sigma, sigma, rtol=0, atol=1e-4 * scale)


def test_npz_sets_equal_folders_and_eight_devices_equal_one(sets, inception_weights):
  """The same features from the folder on 8 devices and from the .npz on 1 (kept there in
  memory-mapped files): the metrics, functions of these, follow."""
  assert jax.local_device_count() == 8
  params, _ = inception.load_params(inception_weights[1])
  keep = dict(keep_pool3=True, keep_logits=True)
  folder = features.extract(image_sets.open_images(sets["samples"]),
                            features.Extractor(params, batch_size=16), **keep)
  npz = features.extract(
      image_sets.open_images(os.path.join(os.path.dirname(sets["samples"]), "samples.npz")),
      features.Extractor(params, devices=jax.local_devices()[:1], batch_size=16),
      memmap_bytes=0, **keep)
  assert isinstance(npz.pool3_all, np.memmap) and isinstance(npz.logits, np.memmap)
  assert not isinstance(folder.pool3_all, np.memmap)
  for a, b in ((folder.pool3_all, npz.pool3_all), (folder.logits, npz.logits),
               (folder.spatial.mean_and_covariance()[1], npz.spatial.mean_and_covariance()[1])):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_image_sets_and_their_errors(sets, tmp_path):
  folder = image_sets.open_images(sets["samples"])
  assert (folder.count, folder.height, folder.width, folder.channels) == (16, 48, 48, 3)
  npz = image_sets.open_images(os.path.join(os.path.dirname(sets["samples"]), "samples.npz"))
  batches = list(npz.batches(8))
  assert [len(b) for b in batches] == [8, 8]
  np.testing.assert_array_equal(np.concatenate(batches),
                                np.concatenate(list(folder.batches(7))))
  Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp_path / "a.png")
  Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(tmp_path / "b.png")
  with pytest.raises(ValueError, match=r"b.png is 48x48 px; .*a.png .* are 48x40 px"):
    list(image_sets.open_images(str(tmp_path)).batches(4))
  np.savez(tmp_path / "float.npz", images=np.zeros((2, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"images is float32 \(2, 8, 8, 3\); expected uint8"):
    image_sets.open_images(str(tmp_path / "float.npz"))
  np.savez(tmp_path / "other.npz", x=np.zeros(3))
  with pytest.raises(ValueError, match=r"holds \['x'\]; expected images under one of"):
    image_sets.open_images(str(tmp_path / "other.npz"))
  with pytest.raises(FileNotFoundError, match="expected a folder of images or an .npz"):
    image_sets.open_images(str(tmp_path / "none"))
  with pytest.raises(ValueError, match=r"metrics=\['fjd'\]: expected some of"):
    fid.compute(sets["samples"], sets["samples"], "unused.npz", metrics=("fjd",))


@pytest.mark.slow
@pytest.mark.xdist_group("processes")  # See tests/conftest.py.
def test_two_processes_equal_one(inception_weights, tmp_path):
  """Two JAX processes (2 devices each), each reading and extracting its part of both sets,
  then gathering, give the numbers of one process on 8 devices. (TFDS splits are split with
  split_for_jax_process: tests/eval/fid_test.py::test_tfds_reference_...)"""
  from tests.eval import _fid_worker  # pylint: disable=import-outside-toplevel
  from tests.training import multihost_test  # pylint: disable=import-outside-toplevel
  samples, reference = str(tmp_path / "samples.npz"), str(tmp_path / "reference.npz")
  np.savez(samples, arr_0=metrics_fixtures.random_images(16, 10, 3)[..., :1])
  np.savez(reference, arr_0=metrics_fixtures.random_images(16, 11, 4))
  port = str(multihost_test._free_port())  # pylint: disable=protected-access
  workers = [subprocess.Popen(
      [sys.executable, "-m", "tests.eval._fid_worker", str(i), port, inception_weights[1],
       samples, reference, str(tmp_path / "two.json")], cwd=ROOT,
      env=subprocesses.environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  try:
    one = fid.compute(samples, reference, inception_weights[1], **_fid_worker.ARGS)
  finally:
    logs = [w.communicate(timeout=900)[0] for w in workers]
  for worker, log in zip(workers, logs):
    assert worker.returncode == 0, log[-4000:]
  two = json.loads((tmp_path / "two.json").read_text())
  assert (two["num_samples"], two["num_reference"]) == (one["num_samples"],
                                                        one["num_reference"]) == (10, 11)
  keys = ("fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "precision", "recall")
  errors = {k: abs(two[k] - one[k]) / max(abs(one[k]), 1e-12) for k in keys}
  print(f"two processes x 2 devices vs one x 8: relative differences {errors}")
  assert max(errors.values()) <= 1e-4, errors


@pytest.mark.slow
def test_tfds_reference_statistics_files_and_the_cache(data_dir, inception_weights, tmp_path):
  """A folder of the very images a TFDS split gives has FID 0 and precision/recall 1 against
  `tfds:` (so both read the same images); its saved statistics then serve as the samples,
  the split's statistics coming from the cache; an ADM reference batch of the same images
  (its own mu/sigma, its arr_0 for precision/recall) agrees; other modes are refused."""
  config = fid.tfds_data_config("digits", 16, data_dir=data_dir, small_images="upscale")
  images = np.concatenate(list(image_sets.from_data(config, "test[:12]").batches(64)))
  assert images.shape == (12, 16, 16, 1) and images.dtype == np.uint8
  whole = image_sets.from_data(config, "test[:12]")  # As each of 2 processes reads it:
  parts = [whole.shard(i, 2) for i in range(2)]
  assert [p.count for p in parts] == [6, 6]
  np.testing.assert_array_equal(np.concatenate([b for p in parts for b in p.batches(4)]),
                                images)
  folder = tmp_path / "same"
  for i, image in enumerate(images):
    visualize.save_png(image, str(folder / f"{i:02d}.png"))
  common = dict(split="test[:12]", data_dir=data_dir, small_images="upscale", batch_size=16,
                fid_method="eigvals", cache_dir=str(tmp_path / "cache"))
  weights = inception_weights[1]
  saved = str(tmp_path / "same_stats.npz")
  # (Each Fréchet distance is an eigen-decomposition of 2048 x 2048: a few per test. In
  # process, so that every call here shares one compiled Inception; the command line is
  # test_metrics_equal_torch_fidelity's.)
  first = fid.compute(str(folder), "tfds:digits", weights, metrics=("fid", "prc"),
                      save_stats=saved, **common)
  trace = np.trace(statistics.load(saved).sigma)
  print(f"identical sets: fid {first['fid']:.3e} (trace {trace:.3e})")
  assert abs(first["fid"]) <= 1e-6 * trace and (first["precision"], first["recall"]) == (1, 1)
  assert first["num_reference"] == 12 and os.path.isfile(first["reference_cache"])
  stamp = os.stat(first["reference_cache"]).st_mtime_ns
  with np.load(saved) as ours:  # As pytorch-fid's --save-stats writes them: mu, sigma only.
    np.savez(tmp_path / "bare.npz", mu=ours["mu"], sigma=ours["sigma"])
  with mock.patch.object(statistics, "measure", side_effect=AssertionError("re-extracted")):
    again = fid.compute(str(tmp_path / "bare.npz"), "tfds:digits", weights, image_size=16,
                        reference_mode="tf1", **common)  # (Declared: made with tf1 inputs.)
  assert again["reference_cache"] == first["reference_cache"]
  assert os.stat(first["reference_cache"]).st_mtime_ns == stamp
  assert again["fid"] == pytest.approx(first["fid"], rel=1e-9, abs=1e-9)
  # What bare statistics cannot give is listed, with the reason.
  assert set(again["not_computed"]) == {"sfid", "isc", "kid", "prc"}
  assert "bare.npz has no spatial statistics" in again["not_computed"]["sfid"]
  with np.load(saved) as ours:
    np.savez(tmp_path / "adm_batch.npz", arr_0=images, **{k: ours[k] for k in (
        "mu", "sigma", "mu_s", "sigma_s")})
  adm = fid.compute(saved, str(tmp_path / "adm_batch.npz"), weights, metrics=("sfid", "prc"),
                    **common)
  spatial = np.trace(statistics.load(saved).sigma_s)
  assert adm["reference_kind"] == "adm" and abs(adm["sfid"]) <= 1e-6 * spatial
  assert (adm["precision"], adm["recall"]) == (1, 1)
  with pytest.raises(ValueError, match=r"same_stats.npz holds statistics of mode 'tf1', the "
                     r"samples are read with mode 'pytorch_fid'.*Use --mode=tf1"):
    fid.compute(saved, "tfds:digits", weights, mode="pytorch_fid", image_size=16, **common)
  with pytest.raises(ValueError, match=r"metrics: isc cannot be computed: .*same_stats.npz is "
                     r"a statistics file"):
    fid.compute(saved, str(folder), weights, metrics=("isc",), **common)

