"""conditioning.type='class': a class label per image (`label`).

class_input='context': a trained class embedder gives a one-token context for
cross-attention (LDM cin256); its extra row is the null class of guidance. class_input=
'embedding': the network's own label embedding, added to its time embedding; the null class
is the index `num_classes`.
"""

import jax.numpy as jnp
import numpy as np

from ldm_jax.ldm.modes import base

CLASS_INPUTS = ("context", "embedding")


class ClassLabel(base.Mode):
  NAME = "class"
  CACHEABLE = True
  SAMPLE_INPUTS = ("class_label",)
  CONDITIONER = "class"

  def setup(self, config) -> None:
    block = self.block
    self.num_classes = int(block.num_classes)
    self.class_input = block.get("class_input", "context")
    if self.class_input not in CLASS_INPUTS:
      raise ValueError(f"conditioning.class_input={self.class_input!r}: expected one of "
                       f"{CLASS_INPUTS}.")
    if self.class_input == "context":
      self._build_conditioner(config)
      if config.conditioner.num_classes != self.num_classes:
        raise ValueError(f"conditioner.num_classes={config.conditioner.num_classes} but "
                         f"conditioning.num_classes={self.num_classes}.")
      if self.dropout and not config.conditioner.add_null_class:
        raise ValueError("conditioning.dropout > 0 needs a null class: set "
                         "conditioner.add_null_class=True.")

  @property
  def label_classes(self):
    if self.class_input != "embedding":
      return None
    return self.num_classes + (1 if self.dropout else 0)

  @property
  def batch_keys(self):
    return ("label",)

  def fields(self, batch, key):
    del key
    return {"label": batch["label"]}

  def context_and_labels(self, params, fields, keep):
    keep = keep.astype(bool)
    labels = fields["label"].astype(jnp.int32)
    if self.class_input == "embedding":
      return None, jnp.where(keep, labels, self.num_classes)
    labels = jnp.where(keep, labels, self.module.null_label if self.dropout else 0)
    return self.module.apply({"params": params}, labels).astype(jnp.float32), None

  def read(self, given, image_size):
    value = given.get("class_label")
    labels = list(range(self.num_classes)) if value is None else (
        [value] if np.ndim(value) == 0 else list(value))
    for label in labels:
      if not isinstance(label, (int, np.integer)) or not 0 <= label < self.num_classes:
        raise ValueError(f"class_label={label!r}: expected an integer in 0 .. "
                         f"{self.num_classes - 1} (the model has {self.num_classes} classes).")
    labels = [int(l) for l in labels]
    return base.Request({"label": np.asarray(labels, np.int32)}, labels, image_size,
                        "data.image_size")

  def grid(self, sampling, batch, key):
    del batch, key
    per_row = int(sampling.per_row)
    shown = min(self.num_classes, int(sampling.max_rows))
    return {"label": np.repeat(np.arange(shown, dtype=np.int32), per_row)}, shown * per_row, (
        per_row)
