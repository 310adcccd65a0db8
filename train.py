"""Trains one stage of an LDM: `python train.py --config=configs/x.py[:variant] --workdir=DIR`.

Rerunning the same command resumes from the newest checkpoint in DIR. Multi-host: pass
--distributed (TPU pods and SLURM are detected; elsewhere also --coordinator_address,
--num_processes and --process_id).
"""

# First: a SIGTERM from here on stops the run cleanly (exit 0, the step reached saved).
from ldm_jax.training import preemption  # pylint: disable=g-bad-import-order

preemption.install_for_process()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (--distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (--distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (--distributed).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.distributed:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  logging.info("JAX process %d of %d, %d local devices of %d.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  from ldm_jax.training import loop  # pylint: disable=import-outside-toplevel
  loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
