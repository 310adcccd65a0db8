"""One of two JAX processes on CPU (gloo): reads its part of digits, saves/restores position.

Run by multiprocess_test.py as `python -m tests.data._multiprocess_worker ID PORT DATA_DIR OUT`.
"""

import json
import os
import sys

from tests import subprocesses


def main(process_id: int, port: str, data_dir: str, out_dir: str) -> None:
  subprocesses.set_device_count(4)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  from ldm_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = common.data_config(name="digits", data_dir=data_dir, image_size=8,
                              batch_size=16, label_key="label", shuffle_buffer=100)
  iterator = pipeline.create_iterator(config, seed=0)
  first = next(iterator)
  image = first["image"]
  local = np.concatenate([np.asarray(s.data) for s in sorted(
      image.addressable_shards, key=lambda s: s.index[0].start)])
  iterator.save(os.path.join(out_dir, "position"))
  continued = [np.asarray(next(iterator)["id"]).tolist() for _ in range(3)]
  restored = pipeline.create_iterator(config, seed=0)
  restored.restore(os.path.join(out_dir, "position"))
  resumed = [np.asarray(next(restored)["id"]).tolist() for _ in range(3)]
  report = {
      "global_shape": list(image.shape),
      "local_devices": len(jax.local_devices()),
      "shard_shapes": sorted({tuple(s.data.shape) for s in image.addressable_shards}),
      "ids": [i.decode() for i in first["id"]],
      "local_sum": float(local.sum()),
      "global_sum": float(jax.jit(lambda x: x.sum())(image)),
      "label_sum": int(jax.jit(lambda x: x.sum())(first["label"])),
      "local_label_sum": sum(int(np.asarray(s.data).sum())
                             for s in first["label"].addressable_shards),
      "resume_equal": continued == resumed,
  }
  with open(os.path.join(out_dir, f"report_{process_id}.json"), "w") as f:
    json.dump(report, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
