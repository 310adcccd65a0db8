"""Throughput per device on synthetic data: step time, images/s, compile time, FLOPs, MFU.

  python benchmark.py --config=configs/benchmark.py:point=sd_unet_256 --json=out.json
  python benchmark.py --config=configs/benchmark.py:point=kl_f8,tiny --compare=diffusers
  python benchmark.py --data=jpeg_folder,latent_cache,bsrgan --batch_size=32

Measures what `config.benchmark.measure` names (see ldm_jax/benchmark/jax_steps.py); with
--compare=diffusers also the same UNet / VAE step in diffusers, in alternating rounds.
Needs no TensorFlow and no data (except --data, the input pipelines' throughput).
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "A configs/benchmark.py point.",
                                lock_config=True)
flags.DEFINE_string("json", None, "Write the record here.")
flags.DEFINE_enum("compare", None, ["diffusers", "diffusers_compile"],
                  "Also time diffusers' step (eager, or through torch.compile).")
flags.DEFINE_list("measure", None, "Measurements to take (default: the point's).")
flags.DEFINE_integer("batch_size", None, "Global batch.")
flags.DEFINE_integer("image_size", None, "Image side in pixels.")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_string("remat", None, "Rematerialise blocks: false, true (= full), full, dots, "
                    "dots_no_batch (ldm_jax/nn/remat.py).")
flags.DEFINE_string("attention_impl", None, "xla or cudnn.")
flags.DEFINE_string("mesh", None, "data,fsdp sizes, e.g. -1,1 or 2,4.")
flags.DEFINE_integer("steps", None, "Timed steps.")
flags.DEFINE_integer("warmup", None, "Untimed steps before them.")
flags.DEFINE_integer("sampling_steps", None, "Sampler steps of a `sampling` measurement.")
flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance of `sampling`.")
flags.DEFINE_list("data", None, "Instead of a model point: input-pipeline throughput of "
                  "jpeg_folder, latent_cache, bsrgan (ldm_jax/benchmark/data.py; TensorFlow).")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.data:
    from ldm_jax.benchmark import data  # pylint: disable=import-outside-toplevel
    results = data.run(FLAGS.data, batch_size=FLAGS.batch_size or 32,
                       batches=FLAGS.steps or 20)
    print(data.table(results))
    _write(FLAGS.json, {"data": [r.as_dict() for r in results]})
    return
  if FLAGS.config is None:
    raise app.UsageError("--config=configs/benchmark.py:point=NAME (or --data=...) is "
                         "required.")
  from ldm_jax.benchmark import run  # pylint: disable=import-outside-toplevel
  config = FLAGS.config
  with config.unlocked():
    if FLAGS.remat is not None:
      value = FLAGS.remat.lower()
      config.benchmark.remat = {"true": True, "false": False}.get(value, value)
    for name in ("compare", "batch_size", "image_size", "dtype", "attention_impl",
                 "steps", "warmup", "sampling_steps", "guidance_scale"):
      if FLAGS[name].value is not None:
        config.benchmark[name] = FLAGS[name].value
    if FLAGS.measure:
      config.benchmark.measure = tuple(FLAGS.measure)
    if FLAGS.mesh:
      sizes = FLAGS.mesh.split(",")
      if len(sizes) != 2:
        raise app.UsageError(f"--mesh={FLAGS.mesh!r}: expected data,fsdp (e.g. -1,1).")
      config.mesh.update(data=int(sizes[0]), fsdp=int(sizes[1]))
  record = run.run(config)
  print(run.table(record))
  _write(FLAGS.json, record)


def _write(path, record) -> None:
  if path:
    with open(path, "w") as f:
      json.dump(record, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
