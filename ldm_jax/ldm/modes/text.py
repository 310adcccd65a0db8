"""conditioning.type='text': a caption per image, through an offline tokenizer and a
transformer text encoder trained with the network; the null condition is the empty caption.

At sampling a `negative_prompt` replaces the empty caption in the unconditional half of
classifier-free guidance (as Stable Diffusion's pipelines do).
"""

import jax.numpy as jnp
import numpy as np

from ldm_jax.ldm.modes import base
from ldm_jax.models import tokenizer as tokenizer_lib


def prompt_list(value, name: str) -> list[str]:
  """A string or a list of strings -> a non-empty list of strings."""
  prompts = [value] if isinstance(value, str) else list(value)
  if not prompts or not all(isinstance(p, str) for p in prompts):
    raise ValueError(f"{name}={value!r}: expected a string or a list of strings.")
  return prompts


class Text(base.Mode):
  NAME = "text"
  CACHEABLE = True
  SAMPLE_INPUTS = ("prompt", "negative_prompt")
  CONDITIONER = "text"

  def setup(self, config) -> None:
    self._build_conditioner(config)
    self._setup_tokenizer(config)

  def _setup_tokenizer(self, config, kind: str | None = None) -> None:
    """The tokenizer of conditioning.tokenizer (`kind`: the kind its files must be)."""
    pad = self.block.get("pad")
    pad = int(pad) if isinstance(pad, str) and pad.isdigit() else pad
    path = self.block.get("tokenizer")
    self.tokenizer = tokenizer_lib.load_tokenizer(path, kind=kind if path else None, pad=pad)
    self.max_length = int(config.conditioner.max_length)
    if config.conditioner.vocab_size < self.tokenizer.vocab_size:
      raise ValueError(f"conditioner.vocab_size={config.conditioner.vocab_size} is smaller "
                       f"than the tokenizer's {self.tokenizer.vocab_size} "
                       f"({self.block.get('tokenizer') or 'bytes'}).")
    self.null_tokens = self.tokenizer([""], self.max_length)[0]

  def tokenize(self, captions, *, training: bool = False) -> np.ndarray:
    """Ids [len(captions), max_length]; truncated prompts are warned about at every call,
    training batches' at most every 10 minutes."""
    return self.tokenizer(list(captions), self.max_length,
                          warn_every_seconds=600 if training else None)

  @property
  def batch_keys(self):
    return ("tokens",)

  def host_fields(self, batch):
    if "caption" not in batch:
      raise KeyError(f"conditioning.type={self.NAME!r} needs captions: set data.caption_key.")
    return {"tokens": self.tokenize(np.asarray(batch["caption"]), training=True)}

  def fields(self, batch, key):
    del key
    return {"tokens": batch["tokens"]}

  def _tokens_kept(self, fields, keep):
    """The tokens of kept rows; dropped rows get the negative prompt, or the empty one."""
    tokens = fields["tokens"].astype(jnp.int32)
    dropped = fields.get("negative_tokens")
    dropped = jnp.asarray(self.null_tokens)[None] if dropped is None else dropped.astype(
        jnp.int32)
    return jnp.where(keep.astype(bool)[:, None], tokens, dropped)

  def context_and_labels(self, params, fields, keep):
    tokens = self._tokens_kept(fields, keep)
    return self.module.apply({"params": params}, tokens).astype(jnp.float32), None

  def read(self, given, image_size):
    value = given.get("prompt")
    if value is None:
      raise ValueError("The model is text-conditional: give a prompt (a string or a list).")
    prompts = prompt_list(value, "prompt")
    fields = {"tokens": self.tokenize(prompts)}
    negative = given.get("negative_prompt")
    if negative is not None:
      negatives = prompt_list(negative, "negative_prompt")
      if len(negatives) not in (1, len(prompts)):
        raise ValueError(f"negative_prompt: {len(negatives)} given for {len(prompts)} "
                         f"prompts; expected one, or one per prompt.")
      tokens = self.tokenize(negatives)
      fields["negative_tokens"] = np.repeat(tokens, len(prompts) // len(negatives), axis=0)
    return base.Request(fields, prompts, image_size, "data.image_size")

  def grid(self, sampling, batch, key):
    del batch, key
    prompts = list(sampling.prompts)
    if not prompts:
      raise ValueError("sampling.prompts is empty: give the captions of the sample grid.")
    per_row = int(sampling.per_row)
    tokens = self.tokenize(np.repeat(np.asarray(prompts, object), per_row))
    return {"tokens": tokens}, len(tokens), per_row
