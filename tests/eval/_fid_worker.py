"""Worker of fid_test.py's two-process run.

`python -m tests.eval._fid_worker ID PORT WEIGHTS SAMPLES REFERENCE OUT`: one of two JAX
processes (2 CPU devices each, gloo) measuring SAMPLES against REFERENCE (.npz sets: no
TensorFlow to import) together; process 0 writes the result to OUT.
"""

import json
import sys

from tests import subprocesses

# Shared with the one-process run of the test.
ARGS = dict(batch_size=16, fid_method="eigvals", kid_subsets=5, kid_subset_size=5,
            isc_splits=2, metrics=("fid", "isc", "kid", "prc"))


def main(process_id: int, port: str, weights: str, samples: str, reference: str,
         out: str) -> None:
  subprocesses.set_device_count(2)
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
  from ldm_jax.eval import fid  # pylint: disable=import-outside-toplevel
  result = fid.compute(samples, reference, weights, **ARGS)
  if jax.process_index() == 0:
    with open(out, "w") as f:
      json.dump(result, f)


if __name__ == "__main__":
  main(int(sys.argv[1]), *sys.argv[2:])
