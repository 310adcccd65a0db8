"""Architectures read off a checkpoint: CompVis / SD single files (from tensor names and
shapes) and diffusers pipeline folders (from each part's config.json).

Shapes fix everything but the attention heads, which the family gives: SD 1.x and LDM
txt2img use 8 heads everywhere, SD 2.x 64 channels per head. The families:
  'sd1'          CLIP ViT-L/14 text encoder (transformers' layout in the file), context 768;
  'sd2'          OpenCLIP ViT-H/14 (OpenCLIP's layout), context 1024, penultimate layer;
  'ldm_txt2img'  LDM's BERTEmbedder (x-transformers' layout), context 1280.
"""

import re

from absl import logging
import ml_collections

from ldm_jax.convert import compvis
from ldm_jax.convert import text_encoders
from ldm_jax.recipes import architectures

FAMILIES = ("sd1", "sd2", "ldm_txt2img")
# The family of each text-encoder layout, in single files.
FAMILY_OF_LAYOUT = {"hf": "sd1", "open_clip": "sd2", "ldm_bert": "ldm_txt2img"}
# OpenCLIP ViT-H/14's text tower (SD 2.x).
VIT_H_WIDTH, VIT_H_DEPTH = 1024, 24
HEADS = {"sd1": dict(num_heads=8, num_head_channels=-1),
         "ldm_txt2img": dict(num_heads=8, num_head_channels=-1),
         "sd2": dict(num_heads=-1, num_head_channels=64)}


def _shape(state, key: str, source: str) -> tuple[int, ...]:
  if key not in state:
    raise ValueError(f"{source}: no tensor {key!r}; expected a CompVis / Stable Diffusion "
                     f"checkpoint (keys such as {sorted(state)[:3]}...).")
  return tuple(state[key].shape)


def _indices(state, prefix: str, pattern: str) -> set[int]:
  """The numbers the regex `pattern` (one group) finds after `prefix` in the keys."""
  return {int(m[1]) for k in state if (m := re.match(re.escape(prefix) + pattern, k))}


def family(state, source: str) -> str:
  """The family of a single file, from its text encoder's layout; an error says what the
  file holds when it is none of them."""
  cond = [k for k in state if k.startswith(compvis.CONDITIONER_PREFIX)]
  layout = text_encoders.layout_of(cond)
  if layout is None:
    found = sorted({k.split(".")[0] for k in state})
    raise ValueError(
        f"{source}: not a text-to-image checkpoint of a known family {FAMILIES}: its "
        f"cond_stage_model.* keys ({len(cond)}: {sorted(cond)[:3]}) are no CLIP, OpenCLIP or "
        f"LDM-BERT text encoder (top-level names found: {found}).")
  return FAMILY_OF_LAYOUT[layout]


def unet_block(state, fam: str, source: str) -> ml_collections.ConfigDict:
  """Our UNet block of a CompVis UNet (`model.diffusion_model.*`)."""
  p = compvis.UNET_PREFIX
  conv_in = _shape(state, f"{p}input_blocks.0.0.weight", source)
  blocks = _indices(state, p, r"input_blocks\.(\d+)\.")
  downs = sorted(i for i in blocks if f"{p}input_blocks.{i}.0.op.weight" in state)
  per_level = downs[0] if downs else max(blocks)  # Blocks per level, downsampler included.
  num_res_blocks = per_level - 1 if downs else max(blocks)
  levels = len(downs) + 1
  mult, attention = [], []
  for level in range(levels):
    first = 1 + level * per_level
    width = _shape(state, f"{p}input_blocks.{first}.0.out_layers.3.weight", source)[0]
    mult.append(width // conv_in[0])
    attention.append(any(k.startswith(f"{p}input_blocks.{first}.1.") for k in state))
  context = [v.shape[1] for k, v in state.items() if k.startswith(p) and
             k.endswith("attn2.to_k.weight")]
  depth = 1
  if True in attention:  # Transformer blocks in the first attention level's block.
    first = 1 + attention.index(True) * per_level
    depth = len(_indices(state, p, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\."))
  proj = [v for k, v in state.items() if k.startswith(p) and k.endswith("proj_in.weight")]
  return _unet(
      in_channels=conv_in[1], out_channels=_shape(state, f"{p}out.2.weight", source)[0],
      model_channels=conv_in[0], channel_mult=tuple(mult), num_res_blocks=num_res_blocks,
      attention_resolutions=tuple(2**l for l, a in enumerate(attention) if a),
      transformer_depth=depth, context_dim=context[0] if context else None,
      linear_projection=bool(proj) and proj[0].ndim == 2, groups=32, **HEADS[fam])


def _unet(**kw) -> ml_collections.ConfigDict:
  block = architectures.sd_v1_unet()
  block.update(kw)
  return block


def autoencoder_block(state, source: str, prefix: str = compvis.AUTOENCODER_PREFIX
                      ) -> ml_collections.ConfigDict:
  """Our KL autoencoder block of a CompVis AutoencoderKL (`first_stage_model.*`)."""
  conv_in = _shape(state, f"{prefix}encoder.conv_in.weight", source)
  levels = 1 + max(_indices(state, prefix, r"encoder\.down\.(\d+)\."))
  mult = [_shape(state, f"{prefix}encoder.down.{l}.block.0.conv2.weight", source)[0]
          // conv_in[0] for l in range(levels)]
  blocks = _indices(state, prefix, r"encoder\.down\.0\.block\.(\d+)\.")
  attends = [l for l in range(levels) if f"{prefix}encoder.down.{l}.attn.0.q.weight" in state]
  block = architectures.sd_kl_f8()
  block.update(ch=conv_in[0], ch_mult=tuple(mult), num_res_blocks=len(blocks),
               in_channels=conv_in[1],
               out_ch=_shape(state, f"{prefix}decoder.conv_out.weight", source)[0],
               z_channels=_shape(state, f"{prefix}decoder.conv_in.weight", source)[1],
               # post_quant_conv maps embed_dim -> z_channels: (out, in, 1, 1).
               embed_dim=_shape(state, f"{prefix}post_quant_conv.weight", source)[1],
               attn_resolutions=tuple(block.resolution // 2**l for l in attends))
  return block


# Per CLIP layout in single files: (prefix, token table, positions, block index pattern,
# first block's MLP input weight).
_CLIP_NAMES = {
    "sd1": ("cond_stage_model.transformer.", "embeddings.token_embedding.weight",
            "embeddings.position_embedding.weight", r"encoder\.layers\.(\d+)\.",
            "encoder.layers.0.mlp.fc1.weight"),
    "sd2": ("cond_stage_model.model.", "token_embedding.weight", "positional_embedding",
            r"transformer\.resblocks\.(\d+)\.", "transformer.resblocks.0.mlp.c_fc.weight"),
}


def text_encoder_block(state, fam: str, source: str) -> ml_collections.ConfigDict:
  """Our conditioner block of the file's text encoder (`cond_stage_model.*`)."""
  if fam == "ldm_txt2img":
    p = "cond_stage_model.transformer."
    vocab, width = _shape(state, f"{p}token_emb.weight", source)
    inner = _shape(state, f"{p}attn_layers.layers.0.1.to_q.weight", source)[0]
    block = architectures.ldm_bert()
    block.update(vocab_size=vocab, width=width, heads=inner // 64, head_dim=64,
                 depth=len(_indices(state, p, r"attn_layers\.layers\.(\d+)\.")) // 2,
                 max_length=_shape(state, f"{p}pos_emb.emb.weight", source)[0])
    return block
  p, tokens, positions, blocks, mlp = _CLIP_NAMES[fam]
  if fam == "sd1" and f"{p}text_model.{tokens}" in state:
    p += "text_model."
  vocab, width = _shape(state, p + tokens, source)
  if fam == "sd1" and width == VIT_H_WIDTH:
    raise ValueError(f"{source}: a {width}-wide text encoder (OpenCLIP ViT-H/14's, SD 2.x) "
                     f"in transformers' names, where SD 2.x files use OpenCLIP's: convert the "
                     f"model's diffusers folder instead.")
  depth = len(_indices(state, p, blocks))
  if fam == "sd2" and width == VIT_H_WIDTH and depth == VIT_H_DEPTH - 1:
    # Files re-saved from diffusers hold 23 blocks: the last one, which SD 2 never runs,
    # is dropped. The tower is still ViT-H/14's 24 with the penultimate as the context.
    logging.info("%s: 23 of OpenCLIP ViT-H/14's 24 text blocks (the unused last one is "
                 "not in the file).", source)
    depth = VIT_H_DEPTH
  block = architectures.sd_v1_text_encoder() if fam == "sd1" else \
      architectures.sd_v2_text_encoder()
  # CLIP's text towers have 64 channels per head (ViT-L/14: 12, ViT-H/14: 16).
  block.update(vocab_size=vocab, width=width, heads=max(width // 64, 1),
               max_length=_shape(state, p + positions, source)[0], depth=depth,
               mlp_width=_shape(state, p + mlp, source)[0])
  return block


# --- diffusers folders ------------------------------------------------------------------------
def unet_from_diffusers(config: dict, source: str) -> ml_collections.ConfigDict:
  """Our UNet block of a diffusers UNet2DConditionModel config.json."""
  widths = list(config["block_out_channels"])
  heads = config.get("attention_head_dim", 8)  # diffusers' name; head *counts* for SD.
  heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(widths)
  if config.get("num_attention_heads"):
    given = config["num_attention_heads"]
    heads = list(given) if isinstance(given, (list, tuple)) else [given] * len(widths)
  attend = [t.startswith("CrossAttn") for t in config["down_block_types"]]
  if len(set(heads)) == 1:
    head_kw = dict(num_heads=heads[0], num_head_channels=-1)
  elif len({w // h for w, h in zip(widths, heads)}) == 1:
    head_kw = dict(num_heads=-1, num_head_channels=widths[0] // heads[0])
  else:
    raise ValueError(f"{source}: attention heads {heads} for widths {widths} are neither "
                     f"one count nor one width per head.")
  depth = config.get("transformer_layers_per_block", 1)
  if isinstance(depth, (list, tuple)):
    if len(set(depth)) != 1:
      raise ValueError(f"{source}: transformer_layers_per_block={depth}: one depth for "
                       f"every level is supported.")
    depth = depth[0]
  unknown = [k for k in ("addition_embed_type", "class_embed_type", "encoder_hid_dim")
             if config.get(k)]
  if unknown or config.get("time_cond_proj_dim"):
    raise ValueError(f"{source}: {unknown or ['time_cond_proj_dim']} are set: not a Stable "
                     f"Diffusion 1.x / 2.x UNet.")
  return _unet(in_channels=config["in_channels"], out_channels=config["out_channels"],
               model_channels=widths[0], channel_mult=tuple(w // widths[0] for w in widths),
               num_res_blocks=config["layers_per_block"],
               attention_resolutions=tuple(2**l for l, a in enumerate(attend) if a),
               transformer_depth=depth, context_dim=config["cross_attention_dim"],
               linear_projection=bool(config.get("use_linear_projection")),
               groups=config.get("norm_num_groups", 32), **head_kw)


def autoencoder_from_diffusers(config: dict) -> ml_collections.ConfigDict:
  """Our KL autoencoder block of a diffusers AutoencoderKL config.json."""
  widths = list(config["block_out_channels"])
  block = architectures.sd_kl_f8()
  block.update(ch=widths[0], ch_mult=tuple(w // widths[0] for w in widths),
               num_res_blocks=config["layers_per_block"], in_channels=config["in_channels"],
               out_ch=config["out_channels"], z_channels=config["latent_channels"],
               embed_dim=config["latent_channels"])
  return block


def text_encoder_from_diffusers(config: dict, source: str) -> ml_collections.ConfigDict:
  """Our CLIP block of a transformers CLIPTextModel config.json (diffusers' text_encoder/;
  SD 2.x's is OpenCLIP-H cut to the 23 layers it uses)."""
  if config.get("model_type", "clip_text_model") not in ("clip_text_model", "clip"):
    raise ValueError(f"{source}: text encoder model_type={config.get('model_type')!r}; "
                     f"expected a CLIPTextModel.")
  config = config.get("text_config", config)
  activation = config.get("hidden_act", "quick_gelu")
  block = architectures.sd_v1_text_encoder()
  block.update(vocab_size=config["vocab_size"], max_length=config["max_position_embeddings"],
               width=config["hidden_size"], depth=config["num_hidden_layers"],
               heads=config["num_attention_heads"], mlp_width=config["intermediate_size"],
               activation=activation, output_layer=-1)
  return block
