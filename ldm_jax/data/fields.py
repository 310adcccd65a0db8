"""Batch fields without TensorFlow (the training steps import this; the benchmark runs
without TensorFlow)."""


def select(batch: dict, keys) -> dict:
  """The batch fields a training step takes (text fields stay on the host)."""
  missing = [k for k in keys if k not in batch]
  if missing:
    raise KeyError(f"The input batch has no field(s) {missing} (it has {sorted(batch)}); "
                   f"set the matching data.*_key in the config.")
  return {k: batch[k] for k in keys}
