"""CompVis / Stable Diffusion checkpoint names <-> diffusers names (which our trees carry).

One function per model family gives the CompVis name of a diffusers-named parameter; the
importer inverts it over the target model's own parameters, so anything in a checkpoint that
the model does not have is reported by name, never guessed. Checked in the tests against the
converters diffusers ships (`diffusers.loaders.single_file_utils`) and, end to end, against
the original CompVis/Stability model code.

Prefixes in a full LDM/SD checkpoint: `model.diffusion_model.` (UNet), `first_stage_model.`
(autoencoder), `cond_stage_model.` (conditioner; ours: the class embedder).
"""

import re
from typing import Callable, Mapping

import numpy as np

UNET_PREFIX = "model.diffusion_model."
AUTOENCODER_PREFIX = "first_stage_model."
CONDITIONER_PREFIX = "cond_stage_model."

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                  "to_out.0": "proj_out"}
# openai AttentionBlock (UNets without SpatialTransformers); its fused `qkv` is split first.
_UNET_SELF_ATTENTION = {"group_norm": "norm", "to_out.0": "proj_out", "to_q": "qkv_q",
                        "to_k": "qkv_k", "to_v": "qkv_v"}


def _sub(rest: str, table: Mapping[str, str]) -> str:
  for ours, theirs in table.items():
    if rest.startswith(ours + "."):
      return theirs + rest[len(ours):]
  return rest


def unet_name(key: str, *, num_res_blocks: int, attention_levels: tuple[bool, ...],
              spatial_transformer: bool = True) -> str:
  """CompVis (openaimodel) name of a diffusers UNet2DConditionModel / UNet2DModel parameter.

  With `spatial_transformer=False` the attention blocks are openai AttentionBlocks, whose
  fused `qkv` must first go through `split_fused_qkv` (names `qkv_q`, `qkv_k`, `qkv_v`).
  """
  per_level = num_res_blocks + 1
  attn = (lambda rest: rest) if spatial_transformer else (
      lambda rest: _sub(rest, _UNET_SELF_ATTENTION))
  fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.":
           "time_embed.2.", "class_embedding.": "label_emb.", "conv_in.": "input_blocks.0.0.",
           "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
  for ours, theirs in fixed.items():
    if key.startswith(ours):
      return theirs + key[len(ours):]
  if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
    level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    block = f"input_blocks.{1 + level * per_level + j}"
    return f"{block}.0.{_sub(rest, _RESNET)}" if kind == "resnets" else f"{block}.1.{attn(rest)}"
  if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
    return f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
  if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
    index = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}[(m[1], m[2])]
    rest = _sub(m[3], _RESNET) if m[1] == "resnets" else attn(m[3])
    return f"middle_block.{index}.{rest}"
  if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
    up, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    block = f"output_blocks.{up * per_level + j}"
    return f"{block}.0.{_sub(rest, _RESNET)}" if kind == "resnets" else f"{block}.1.{attn(rest)}"
  if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
    up = int(m[1])
    level = len(attention_levels) - 1 - up
    slot = 2 if attention_levels[level] else 1
    return f"output_blocks.{up * per_level + num_res_blocks}.{slot}.conv.{m[2]}"
  raise KeyError(f"No CompVis name for UNet parameter {key!r}.")


def autoencoder_name(key: str, *, num_levels: int) -> str:
  """CompVis (taming/ldm) name of a diffusers AutoencoderKL / VQModel parameter."""
  if m := re.match(r"(encoder|decoder)\.(.*)", key):
    part, rest = m[1], m[2]
    fixed = {"conv_norm_out.": "norm_out.", "mid_block.resnets.0.": "mid.block_1.",
             "mid_block.resnets.1.": "mid.block_2.", "mid_block.attentions.0.": "mid.attn_1."}
    for ours, theirs in fixed.items():
      if rest.startswith(ours):
        rest = theirs + rest[len(ours):]
        break
    if m2 := re.match(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)",
                      rest):
      level = int(m2[2]) if m2[1] == "down_blocks" else num_levels - 1 - int(m2[2])
      kind = "block" if m2[3] == "resnets" else "attn"
      rest = f"{'down' if m2[1] == 'down_blocks' else 'up'}.{level}.{kind}.{m2[4]}.{m2[5]}"
    elif m2 := re.match(r"(down_blocks|up_blocks)\.(\d+)\.(down|up)samplers\.0\.(.*)", rest):
      level = int(m2[2]) if m2[1] == "down_blocks" else num_levels - 1 - int(m2[2])
      rest = f"{m2[3]}.{level}.{m2[3]}sample.{m2[4]}"
    rest = rest.replace("conv_shortcut.", "nin_shortcut.")
    if m2 := re.match(r"(.*attn(?:_1|\.\d+))\.(.*)", rest):
      rest = f"{m2[1]}.{_sub(m2[2], _VAE_ATTENTION)}"
    return f"{part}.{rest}"
  return key  # quant_conv, post_quant_conv, quantize.embedding.weight keep their names.


def text_encoder_name(key: str) -> str:
  """LDM `BERTEmbedder` name (an x-transformers TransformerWrapper) of a TextEncoder param.

  Its layers alternate [norm, attention, residual] and [norm, feed-forward, residual]:
  our layer i is their layers 2i and 2i + 1.
  """
  if key == "pos_emb":
    return "transformer.pos_emb.emb.weight"
  if m := re.match(r"layers\.(\d+)\.(\w+)\.(.*)", key):
    i, part, rest = int(m[1]), m[2], m[3]
    table = {"norm_attn": (2 * i, "0"), "attn": (2 * i, "1"), "norm_mlp": (2 * i + 1, "0"),
             "mlp_in": (2 * i + 1, "1.net.0.0"), "mlp_out": (2 * i + 1, "1.net.2")}
    index, inner = table[part]
    rest = rest.replace("to_out.0.", "to_out.")
    return f"transformer.attn_layers.layers.{index}.{inner}.{rest}"
  return f"transformer.{key}"  # token_emb.weight, norm.weight, norm.bias


def split_fused_qkv(state_dict: Mapping[str, np.ndarray],
                    heads_for: Callable[[int], int]) -> dict[str, np.ndarray]:
  """openai AttentionBlock `qkv` (3C, C, 1) -> `qkv_q`, `qkv_k`, `qkv_v` (C, C, 1) each.

  The fused projection is laid out head by head ([q k v] of head 0, then head 1, ...: the
  legacy QKV order that LDM uses), so it is split per head. `heads_for(C)` gives the number
  of heads of a block with C channels.
  """
  out = {}
  for key, value in state_dict.items():
    if not re.search(r"\.qkv\.(weight|bias)$", key):
      out[key] = value
      continue
    channels = value.shape[0] // 3
    heads = heads_for(channels)
    grouped = np.reshape(value, (heads, 3, channels // heads) + value.shape[1:])
    for index, part in enumerate("qkv"):
      out[key.replace(".qkv.", f".qkv_{part}.")] = np.reshape(
          grouped[:, index], (channels,) + value.shape[1:])
  return out


def rename(state_dict: Mapping[str, np.ndarray], target_keys, name_of: Callable[[str], str],
           prefix: str) -> tuple[dict[str, np.ndarray], list[str]]:
  """CompVis-named `state_dict` (under `prefix`) -> diffusers names of `target_keys`.

  Returns (renamed, leftovers): leftovers are source keys under `prefix` that no target
  parameter claims; the caller reports them.
  """
  wanted = {prefix + name_of(k): k for k in target_keys}
  renamed, leftovers = {}, []
  for key, value in state_dict.items():
    if not key.startswith(prefix):
      continue
    if key in wanted:
      renamed[wanted[key]] = value
    else:
      leftovers.append(key)
  return renamed, leftovers


def ema_view(state_dict: Mapping[str, np.ndarray], prefix: str = UNET_PREFIX) -> dict:
  """The EMA weights of a CompVis checkpoint under their non-EMA names.

  CompVis stores `model.diffusion_model.a.b.weight`'s EMA as `model_ema.diffusion_modelabweight`
  (dots removed); this returns {`model.diffusion_model.a.b.weight`: EMA value}.
  """
  flat = {k[len("model_ema."):]: v for k, v in state_dict.items() if k.startswith("model_ema.")}
  view = {}
  for key in state_dict:
    if key.startswith(prefix):
      squashed = "".join(key.split(".")[1:])
      if squashed in flat:
        view[key] = flat[squashed]
  if not view:
    raise ValueError("use_ema=True, but the checkpoint holds no model_ema.* weights.")
  return view
