"""Preview a data config: python -m ldm_jax.data --config=configs/x.py --out=grid.png"""

from absl import app
from absl import flags
from ml_collections import config_flags

from ldm_jax.data import preview

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", "data_preview.png", "Where to write the PNG grid.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 1, "Batches to summarise.")
_EVAL = flags.DEFINE_bool("eval", False, "Show the evaluation stream (eval_split, center "
                          "crop, no shuffling) instead of the training stream.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  report, images = preview.summarize(_CONFIG.value, num_batches=_NUM_BATCHES.value,
                                     train=not _EVAL.value)
  preview.write_grid(images, _OUT.value)
  print(preview.format_report(report))
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
