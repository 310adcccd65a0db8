"""Evaluation-sized sampling (sample.py --stream, ldm_jax/sampling/bulk.py): split over two
processes, one interrupted and resumed, the result the images one call gives, in ADM's
layout; other plans in the same folder refused."""

import os
from unittest import mock

import numpy as np
import pytest

from ldm_jax.eval import image_sets
from ldm_jax.sampling import bulk
from ldm_jax.sampling import files
from ldm_jax.sampling import sampler as sampler_lib

pytestmark = pytest.mark.slow
SETTINGS = dict(batch_size=8, seed=3, sampler="ddpm", steps=2)  # Stochastic: batch keys count.


def test_split_interrupted_resumed_equals_one_call(tiny_run, tmp_path):
  model = sampler_lib.load(tiny_run("digits_ldm:tiny"))
  out = str(tmp_path / "eval")
  batches = os.path.join(out, "batches")
  # Process 1 of 2: batch 1 (samples 8 .. 15); the result waits for process 0.
  assert bulk.write(out, model, 20, process_index=1, process_count=2, progress=False,
                    **SETTINGS) is None
  assert os.listdir(batches) == ["000001.npz"]
  # Process 0 stopped after its first batch ...
  real, drawn = model.sample, []

  def interrupted(*args, **kwargs):
    if drawn:
      raise KeyboardInterrupt
    drawn.append(kwargs["first_index"])
    return real(*args, **kwargs)
  with mock.patch.object(model, "sample", interrupted), pytest.raises(KeyboardInterrupt):
    bulk.write(out, model, 20, process_index=0, process_count=2, progress=False, **SETTINGS)
  assert sorted(os.listdir(batches)) == ["000000.npz", "000001.npz"] and drawn == [0]
  # ... and run again: only batch 2 is drawn, then process 0 merges.
  with mock.patch.object(model, "sample", wraps=real) as spy:
    path = bulk.write(out, model, 20, process_index=0, process_count=2, progress=False,
                      **SETTINGS)
  assert [c.kwargs["first_index"] for c in spy.call_args_list] == [16]
  assert os.path.basename(path) == "samples_20x16x16x1.npz" and os.listdir(batches) == []
  with np.load(path) as data:
    images, labels = data["arr_0"], data["arr_1"]
  np.testing.assert_array_equal(labels, np.arange(20) * 10 // 20)  # Classes spread evenly.
  whole = model.sample(20, class_label=[int(l) for l in labels], **SETTINGS)
  assert np.abs(images.astype(int) - whole.images.astype(int)).max() <= 1
  assert image_sets.open_images(path).count == image_sets.open_images(out).count == 20
  # Done: running it again draws nothing and returns the result.
  with mock.patch.object(model, "sample", side_effect=AssertionError("drew again")):
    assert bulk.write(out, model, 20, progress=False, **SETTINGS) == path
  with pytest.raises(ValueError, match=r"holds another sampling run .*seed: there 3, now 4"):
    bulk.write(out, model, 20, progress=False, **{**SETTINGS, "seed": 4})


def test_refusals(tiny_run, tmp_path):
  (tmp_path / "used").mkdir()
  (tmp_path / "used" / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="is not a sampling run of --stream"):
    files.run_stream(out=str(tmp_path / "used"), workdir=tiny_run("digits_ldm:tiny"),
                     num_samples=8, progress=False)
  # Refused before anything is drawn or written (no need of a text model to show it).
  text = mock.Mock(mode="text", spec=["mode"])
  with pytest.raises(ValueError, match="conditioned by 'text', which needs an input per"):
    bulk.write(str(tmp_path / "text"), text, 8, progress=False)
  assert not os.path.exists(tmp_path / "text")
