"""Workers for multihost_test.py.

`python -m tests.training._multihost_worker train ID PORT DATA_DIR WORKDIR`: one of two JAX
processes (2 CPU devices each, gloo) training the tiny digits autoencoder; process 0 writes
the final parameters to WORKDIR/params.npz.
`reference(DATA_DIR, devices)`, called in the test's own process: the same steps in one
process on 4 devices.
"""

import os
import sys

from tests import subprocesses

STEPS = 3


def _config(data_dir):
  from configs import digits_autoencoder  # pylint: disable=import-outside-toplevel
  config = digits_autoencoder.get_config("tiny")
  config.data.data_dir = data_dir
  config.num_steps = config.checkpoint_every = STEPS
  config.eval_every = 100
  # The final evaluation and scale factor run once each, on one batch: the test compares
  # the training steps (three JAX processes share two cores here).
  config.eval_batches = config.scale_factor_batches = 1
  config.loss.disc_start = 1
  # Adam's first steps are +-lr even where a gradient is only rounding noise, which two
  # correct reduction orders round differently (see sharded_step_test.py): eps = 1 makes
  # the update proportional to the gradient, so the comparison is of the steps themselves.
  config.optimizer.eps = config.disc_optimizer.eps = 1.0
  return config


def _flat(params) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  return {jax.tree_util.keystr(k): np.asarray(v.addressable_data(0))
          for k, v in jax.tree_util.tree_leaves_with_path(params)}


def train(process_id: int, port: str, data_dir: str, workdir: str) -> None:
  subprocesses.set_device_count(2)
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
  from ldm_jax.training import loop  # pylint: disable=import-outside-toplevel
  state, _ = loop.train_and_evaluate(_config(data_dir), workdir)
  if jax.process_index() == 0:
    import numpy as np  # pylint: disable=import-outside-toplevel
    np.savez(os.path.join(workdir, "params.npz"), **_flat(state.params))


def reference(data_dir: str, devices) -> dict:
  """{parameter path: value} after the same steps in one process on `devices` (4), on the same
  global batches (each process's stream rebuilt with create_dataset(process_index=p,
  process_count=2))."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ldm_jax.data import pipeline, sources  # pylint: disable=import-outside-toplevel
  from ldm_jax.parallel import sharding  # pylint: disable=import-outside-toplevel
  from ldm_jax.training import stages  # pylint: disable=import-outside-toplevel
  config = _config(data_dir)
  mesh = sharding.create_mesh(config.mesh, devices)
  stage = stages.create(config)
  shardings = sharding.tree_shardings(jax.eval_shape(stage.init_state,
                                                     jax.random.key(config.seed)), mesh)
  state = jax.jit(stage.init_state, out_shardings=shardings)(jax.random.key(config.seed))
  step = jax.jit(stage.train_step, donate_argnums=0)
  builder = sources.load_builder(config.data)
  streams = [iter(pipeline.create_dataset(
      config.data, builder=builder, split=config.data.train_split, train=True,
      seed=config.seed, batch_size=config.data.batch_size // 2, process_index=p,
      process_count=2).as_numpy_iterator()) for p in range(2)]
  for _ in range(STEPS):
    parts = [next(s)["image"] for s in streams]
    batch = jax.device_put({"image": np.concatenate(parts)}, sharding.batch_sharding(mesh))
    state, _ = step(state, batch, {})
  return _flat(state.params)


if __name__ == "__main__":
  train(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
