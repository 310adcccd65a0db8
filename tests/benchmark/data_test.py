"""benchmark.py --data: the input-pipeline throughput runs (ours and tf.data's guide) on
small inputs. No test here asserts a speed."""

import pytest

from ldm_jax.benchmark import data


def test_data_kinds_run_and_report_cores(tmp_path):
  results = data.run(["jpeg_folder", "latent_cache"], batch_size=8, batches=2, warmup=1,
                     workdir=str(tmp_path))
  assert [(r.kind, r.pipeline) for r in results] == [
      ("jpeg_folder", "ours"), ("jpeg_folder", "tf.data guide"), ("latent_cache", "ours")]
  for r in results:
    record = r.as_dict()
    assert record["images_per_sec"] > 0 and record["host_cores"] >= 1
    assert record["cores_for_mlperf_rate"] == pytest.approx(
        data.MLPERF_IMAGES_PER_SEC / record["images_per_sec_per_core"])
  assert "jpeg_folder" in data.table(results)
  with pytest.raises(ValueError, match=r"unknown \['png'\]"):
    data.run(["png"])
