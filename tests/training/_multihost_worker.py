"""Workers for multihost_test.py.

`python -m tests.training._multihost_worker train ID PORT DATA_DIR WORKDIR`: one of two JAX
processes (2 CPU devices each, gloo) training the tiny digits autoencoder; process 0 writes
the final parameters to WORKDIR/params.npz.
`python -m tests.training._multihost_worker reference DATA_DIR WORKDIR`: one process with 4
devices runs the same steps on the same global batches (each process's stream rebuilt with
create_dataset(process_index=p, process_count=2)) and writes WORKDIR/reference.npz.
"""

import os
import sys

STEPS = 3


def _config(data_dir):
  from configs import digits_autoencoder  # pylint: disable=import-outside-toplevel
  config = digits_autoencoder.get_config("tiny")
  config.data.data_dir = data_dir
  config.num_steps = config.checkpoint_every = STEPS
  config.eval_every = 100
  config.loss.disc_start = 1
  # Adam's first steps are +-lr even where a gradient is only rounding noise, which two
  # correct reduction orders round differently (see sharded_step_test.py): eps = 1 makes
  # the update proportional to the gradient, so the comparison is of the steps themselves.
  config.optimizer.eps = config.disc_optimizer.eps = 1.0
  return config


def _save(params, path):
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  flat = {jax.tree_util.keystr(k): np.asarray(v.addressable_data(0))
          for k, v in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(path, **flat)


def train(process_id: int, port: str, data_dir: str, workdir: str) -> None:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
  from ldm_jax.training import loop  # pylint: disable=import-outside-toplevel
  state, _ = loop.train_and_evaluate(_config(data_dir), workdir)
  if jax.process_index() == 0:
    _save(state.params, os.path.join(workdir, "params.npz"))


def reference(data_dir: str, workdir: str) -> None:
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ldm_jax.data import pipeline, sources  # pylint: disable=import-outside-toplevel
  from ldm_jax.parallel import sharding  # pylint: disable=import-outside-toplevel
  from ldm_jax.training import stages  # pylint: disable=import-outside-toplevel
  config = _config(data_dir)
  mesh = sharding.create_mesh(config.mesh)
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
  _save(state.params, os.path.join(workdir, "reference.npz"))


if __name__ == "__main__":
  if sys.argv[1] == "train":
    train(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
  else:
    reference(sys.argv[2], sys.argv[3])
