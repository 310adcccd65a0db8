"""Text encoders of the checkpoints people hold -> our CLIPTextEncoder / TextEncoder trees.

Layouts, recognised from the keys (`layout_of`):
  'hf'        transformers' CLIPTextModel: SD 1.x single files (`cond_stage_model.
              transformer.text_model.*`, some without `text_model.`) and diffusers pipeline
              folders (`text_encoder/`, `text_model.*`; transformers >= 5.6 saves it without
              `text_model.`).
  'open_clip' OpenCLIP's text tower: SD 2.x single files (`cond_stage_model.model.*`:
              `token_embedding`, `positional_embedding` (a raw parameter), `transformer.
              resblocks.i.attn.in_proj_weight` with q|k|v stacked, `ln_final`).
  'ldm_bert'  LDM txt2img's BERTEmbedder (x-transformers 0.15: `cond_stage_model.
              transformer.attn_layers.*`).
Blocks past the encoder's `output_layer` (SD 2.x's last one) and tensors no text encoding uses
(`position_ids`, `text_projection`, `logit_scale`, LDM's `to_logits`) are left out, logged
with their count; everything else must fit the target exactly (torch_weights.to_flax).
"""

import re
from typing import Mapping

from absl import logging
import numpy as np

from ldm_jax.convert import compvis
from ldm_jax.convert import torch_weights

LAYOUTS = ("hf", "open_clip", "ldm_bert")
# Where each layout's text encoder sits in a CompVis / SD single file.
SINGLE_FILE_PREFIXES = {"open_clip": "cond_stage_model.model.",
                        "ldm_bert": "cond_stage_model.transformer.",
                        "hf": "cond_stage_model.transformer."}
_UNUSED = (r"(^|\.)position_ids$", r"(^|\.)text_projection(\.weight)?$",
           r"(^|\.)logit_scale$", r"(^|\.)to_logits\.")


def layout_of(keys) -> str | None:
  """The text-encoder layout of a state dict's keys (any prefix), or None."""
  keys = list(keys)
  if any(".attn_layers.layers." in k or k.startswith("attn_layers.") for k in keys):
    return "ldm_bert"
  if any(k.endswith("positional_embedding") for k in keys) and any(
      ".resblocks." in k for k in keys):
    return "open_clip"
  if any("embeddings.token_embedding.weight" in k for k in keys):
    return "hf"
  return None


def _open_clip_to_ours(key: str, value: np.ndarray) -> list[tuple[str, np.ndarray]]:
  """One OpenCLIP text-tower tensor -> (our name, value) pairs: transformers' names, the
  attention's as nn/attention's (q|k|v split)."""
  fixed = {"token_embedding.weight": "embeddings.token_embedding.weight",
           "positional_embedding": "embeddings.position_embedding.weight",
           "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
  if key in fixed:
    return [(fixed[key], value)]
  m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key)
  if not m:
    return [(key, value)]  # Reported as unexpected by the strict check.
  layer, rest = f"encoder.layers.{m[1]}.", m[2]
  if m2 := re.fullmatch(r"attn\.in_proj_(weight|bias)", rest):
    parts = np.split(np.asarray(value), 3, axis=0)
    return [(f"{layer}self_attn.to_{p}.{m2[1]}", v) for p, v in zip("qkv", parts)]
  table = {"attn.out_proj.": "self_attn.to_out.0.", "ln_1.": "layer_norm1.",
           "ln_2.": "layer_norm2.", "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2."}
  for theirs, ours in table.items():
    if rest.startswith(theirs):
      return [(layer + ours + rest[len(theirs):], value)]
  return [(key, value)]


# transformers' attention names -> nn/attention.CrossAttention's, which our encoder uses.
_HF_ATTENTION = {".self_attn.q_proj.": ".self_attn.to_q.", ".self_attn.k_proj.":
                 ".self_attn.to_k.", ".self_attn.v_proj.": ".self_attn.to_v.",
                 ".self_attn.out_proj.": ".self_attn.to_out.0."}


def _hf_to_ours(key: str) -> str:
  for theirs, ours in _HF_ATTENTION.items():
    key = key.replace(theirs, ours)
  return key


def _layer_index(key: str) -> int | None:
  m = re.search(r"(?:encoder\.layers|transformer\.resblocks)\.(\d+)\.", key)
  return int(m[1]) if m else None


def import_clip(state: Mapping[str, np.ndarray], target, *, built_depth: int,
                prefix: str = "", source: str = "") -> dict:
  """Our CLIPTextEncoder parameters (`target`: its shape tree) from an 'hf' or 'open_clip'
  state dict, reading only keys under `prefix`."""
  sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
  layout = layout_of(sub)
  if layout not in ("hf", "open_clip"):
    raise ValueError(f"{source or 'the checkpoint'}: no CLIP text encoder under {prefix!r} "
                     f"(found keys such as {sorted(sub)[:4]}); expected transformers' "
                     f"CLIPTextModel or OpenCLIP names.")
  if layout == "hf":  # `text_model.` is optional (transformers >= 5.6 drops it).
    sub = {k[len("text_model."):] if k.startswith("text_model.") else k: v
           for k, v in sub.items()}
  left_out = [k for k in sub if any(re.search(p, k) for p in _UNUSED) or
              (_layer_index(k) is not None and _layer_index(k) >= built_depth)]
  if left_out:
    layers = sorted({i for i in map(_layer_index, left_out) if i is not None})
    logging.info("Text encoder: leaving out %d unused tensors%s.", len(left_out),
                 f" (blocks {layers}, past the output layer)" if layers else "")
  sub = {k: v for k, v in sub.items() if k not in set(left_out)}
  if layout == "open_clip":
    sub = dict(pair for k, v in sub.items() for pair in _open_clip_to_ours(k, v))
  else:
    sub = {_hf_to_ours(k): v for k, v in sub.items()}
  return torch_weights.to_flax(sub, target)


def import_ldm_bert(state: Mapping[str, np.ndarray], target, *, prefix: str = "") -> dict:
  """Our TextEncoder parameters from LDM's BERTEmbedder (x-transformers 0.15 layout)."""
  unused = [k for k in state if k.startswith(prefix) and
            any(re.search(p, k) for p in _UNUSED)]
  if unused:
    logging.info("Text encoder: leaving out %d unused tensors (to_logits).", len(unused))
  state = {k: v for k, v in state.items() if k not in set(unused)}
  renamed, leftovers = compvis.rename(state, torch_weights.diffusers_keys(target),
                                      compvis.text_encoder_name, prefix)
  return torch_weights.to_flax(renamed, target, unexpected=tuple(leftovers))
