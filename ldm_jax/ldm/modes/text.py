"""conditioning.type='text': a caption per image, through an offline tokenizer and a
transformer text encoder trained with the network; the null condition is the empty caption."""

import jax.numpy as jnp
import numpy as np

from ldm_jax.ldm.modes import base
from ldm_jax.models import tokenizer as tokenizer_lib


class Text(base.Mode):
  NAME = "text"
  CACHEABLE = True
  SAMPLE_INPUTS = ("prompt",)
  CONDITIONER = "text"

  def setup(self, config) -> None:
    self._build_conditioner(config)
    self.tokenizer = tokenizer_lib.load_tokenizer(self.block.get("tokenizer"))
    self.max_length = int(config.conditioner.max_length)
    if config.conditioner.vocab_size < self.tokenizer.vocab_size:
      raise ValueError(f"conditioner.vocab_size={config.conditioner.vocab_size} is smaller "
                       f"than the tokenizer's {self.tokenizer.vocab_size}.")
    self.null_tokens = self.tokenizer([""], self.max_length)[0]

  def tokenize(self, captions) -> np.ndarray:
    return self.tokenizer(list(captions), self.max_length)

  @property
  def batch_keys(self):
    return ("tokens",)

  def host_fields(self, batch):
    if "caption" not in batch:
      raise KeyError("conditioning.type='text' needs captions: set data.caption_key.")
    return {"tokens": self.tokenize(np.asarray(batch["caption"]))}

  def fields(self, batch, key):
    del key
    return {"tokens": batch["tokens"]}

  def context_and_labels(self, params, fields, keep):
    tokens = jnp.where(keep.astype(bool)[:, None], fields["tokens"].astype(jnp.int32),
                       jnp.asarray(self.null_tokens)[None])
    return self.module.apply({"params": params}, tokens).astype(jnp.float32), None

  def read(self, given, image_size):
    value = given.get("prompt")
    if value is None:
      raise ValueError("The model is text-conditional: give a prompt (a string or a list).")
    prompts = [value] if isinstance(value, str) else list(value)
    if not prompts or not all(isinstance(p, str) for p in prompts):
      raise ValueError(f"prompt={value!r}: expected a string or a list of strings.")
    return base.Request({"tokens": self.tokenize(prompts)}, prompts, image_size,
                        "data.image_size")

  def grid(self, sampling, batch, key):
    del batch, key
    prompts = list(sampling.prompts)
    if not prompts:
      raise ValueError("sampling.prompts is empty: give the captions of the sample grid.")
    per_row = int(sampling.per_row)
    tokens = self.tokenize(np.repeat(np.asarray(prompts, object), per_row))
    return {"tokens": tokens}, len(tokens), per_row
