"""conditioning.type='frozen_text': a caption per image through a pretrained text encoder
that does not train (Stable Diffusion's recipe: CLIP ViT-L/14 for SD 1.x, OpenCLIP ViT-H/14
for SD 2.x; any `conditioner` block of type 'clip' or 'text').

  conditioning.text_encoder  a directory written by `python -m ldm_jax.convert` (its
                             `conditioner/` weights), or 'random' (smoke tests only);
  conditioning.tokenizer     the tokenizer files (a converted directory's `tokenizer/`, a
                             diffusers `tokenizer/` folder, vocab.json + merges.txt, ...);
  conditioning.pad           'eos' (SD 1.x) or 0 (SD 2.x); None: what the files say.

The encoder's parameters are held here (`frozen_params`), never in the optimiser or the
run's checkpoints: the model hands them to the jitted steps as an argument beside the
trained parameters (`LatentDiffusion.with_frozen`). A latent cache built for this mode also
stores each caption's context (ldm_jax/ldm/latent_cache.py), and training from it reads
`context` instead of running the encoder; dropped captions get the empty caption's context.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ldm_jax.ldm.modes import text
from ldm_jax.models import factory

ENCODER_TYPES = ("clip", "text")


def load_encoder(config, module):
  """The frozen encoder's parameters from conditioning.text_encoder: numpy float32 read
  from a converted directory, or a random initialisation ('random')."""
  source = config.conditioning.get("text_encoder")
  inputs = factory.conditioner_example_inputs(config.conditioner)
  if source == "random":
    logging.warning("conditioning.text_encoder='random': the frozen text encoder is "
                    "UNTRAINED. Use this for smoke tests only.")
    # JAX arrays: under jax.eval_shape the whole model builds without a compile.
    return jax.jit(lambda key: module.init(key, *inputs)["params"])(jax.random.key(0))
  if not source:
    raise ValueError("conditioning.type='frozen_text' needs conditioning.text_encoder: a "
                     "directory from `python -m ldm_jax.convert` (with conditioner/ "
                     "weights), or 'random' for smoke tests.")
  from ldm_jax.convert import export  # pylint: disable=import-outside-toplevel
  from ldm_jax.ldm import first_stage  # pylint: disable=import-outside-toplevel
  directory = os.path.expanduser(source)
  params = export.read(directory, "conditioner")
  expected = factory.param_shapes(module, inputs)
  first_stage.check_shapes(expected, params, directory, "text encoder")
  return jax.tree.map(lambda x: np.asarray(x, np.float32), params)


class FrozenText(text.Text):
  NAME = "frozen_text"
  CONDITIONER = None
  FROZEN = True

  def setup(self, config) -> None:
    block = config.get("conditioner")
    if block is None or block.get("type") not in ENCODER_TYPES:
      raise ValueError(f"conditioning.type='frozen_text' needs config.conditioner with type "
                       f"in {ENCODER_TYPES} (found "
                       f"{None if block is None else block.get('type')!r}).")
    self.module = factory.build_conditioner(block)
    self.context_width = block.width
    if block.type == "clip" and not self.block.get("tokenizer") and \
        self.block.get("text_encoder") != "random":
      raise ValueError("conditioning.tokenizer is unset: a CLIP text encoder reads CLIP's BPE "
                       "ids; give its tokenizer files (a converted pipeline's tokenizer/, or "
                       "vocab.json + merges.txt).")
    self._setup_tokenizer(config, "clip" if block.type == "clip" else None)
    self.frozen_params = load_encoder(config, self.module)
    self.cached = bool(config.data.get("latent_key"))
    # Computed once, outside any trace: dropped cached captions take it inside the steps.
    self.null_context = np.asarray(jax.jit(self.encode)(self.frozen_params,
                                                        self.null_tokens[None]))[0] \
        if self.cached else None

  def init(self, rng):
    del rng
    return None  # Nothing trains.

  def encode(self, params, tokens):
    """Contexts [B, L, width] (float32) of token ids [B, L]."""
    return self.module.apply({"params": params}, jnp.asarray(tokens, jnp.int32)).astype(
        jnp.float32)

  @property
  def batch_keys(self):
    return ("context",) if self.cached else ("tokens",)

  def host_fields(self, batch):
    return {} if self.cached else super().host_fields(batch)

  def fields(self, batch, key):
    del key
    return {"context": batch["context"]} if self.cached else {"tokens": batch["tokens"]}

  def context_and_labels(self, params, fields, keep):
    if "context" in fields:  # Precomputed by the latent cache.
      context = fields["context"].astype(jnp.float32)
      null = jnp.asarray(self.null_context)[None]
      return jnp.where(keep.astype(bool)[:, None, None], context, null), None
    return self.encode(params, self._tokens_kept(fields, keep)), None
