"""Import UNet / autoencoder weights from CompVis, Stable Diffusion or diffusers sources.

`import_unet(source, config.network)` and `import_autoencoder(source, config.autoencoder)`
accept
* a CompVis/SD single file (`.ckpt`, `.safetensors`): `model.diffusion_model.*` and
  `first_stage_model.*`, or a standalone CompVis autoencoder (`encoder.down.0...`);
* a diffusers model folder, a pipeline folder (with `subfolder='unet'` / `'vae'`), or a
  single diffusers-named weights file.
The naming is recognised from the keys. Returns our parameter tree, checked strictly.
"""

import re
from typing import Mapping

from absl import logging
import ml_collections
import numpy as np

from ldm_jax.convert import compvis
from ldm_jax.convert import files
from ldm_jax.convert import text_encoders
from ldm_jax.convert import torch_weights
from ldm_jax.models import factory
from ldm_jax.models import networks

# Keys of training-only modules in CompVis autoencoder checkpoints (LPIPS, discriminator).
AUTOENCODER_TRAINING_KEYS = (r"^(first_stage_model\.)?loss\.",)


def _read(source: str, subfolder: str | None, state: Mapping[str, np.ndarray] | None):
  """`state` when the caller read `source` already (one read for every part), else read."""
  return dict(state) if state is not None else files.read(source, subfolder)


# Attention names of diffusers folders saved before diffusers 0.14 -> today's names.
_DEPRECATED_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.",
                         ".proj_attn.": ".to_out.0."}


def _modern_diffusers_names(state: dict) -> dict:
  renamed = {}
  for key, value in state.items():
    for old, new in _DEPRECATED_ATTENTION.items():
      if ".attentions." in key and old in key:
        key = key.replace(old, new)
    renamed[key] = value
  return renamed


def _is_compvis(state: dict, markers: tuple[str, ...]) -> bool:
  return any(marker in key for key in state for marker in markers)


def _prefix_in(state: dict, prefix: str) -> str:
  """`prefix` if the checkpoint is a full LDM/SD one that uses it, else '' (standalone)."""
  return prefix if any(k.startswith(prefix) for k in state) else ""


def import_unet(source: str, block: ml_collections.ConfigDict, *,
                subfolder: str | None = None, use_ema: bool = False,
                state: Mapping[str, np.ndarray] | None = None) -> dict:
  """Our UNet parameters from `source` (see the module docstring); `state`: its contents,
  when already read (`files.read`)."""
  state = _read(source, subfolder, state)
  if block.get("type") != "unet":
    raise ValueError(f"network.type={block.get('type')!r}: CompVis and diffusers checkpoints "
                     f"hold UNets; give a network block of type 'unet'.")
  target = factory.param_shapes(networks.build(block), networks.example_inputs(block))
  if not _is_compvis(state, ("input_blocks.", "middle_block.")):
    if use_ema:
      raise ValueError(f"use_ema=True: {source} is diffusers-named; its file already holds "
                       f"one set of weights (pick the EMA folder/file instead).")
    return torch_weights.to_flax(_modern_diffusers_names(state), target)
  if use_ema:
    state = compvis.ema_view(state)
  prefix = _prefix_in(state, compvis.UNET_PREFIX)
  attention_levels = tuple(2**level in block.attention_resolutions
                           for level in range(len(block.channel_mult)))
  if not block.use_spatial_transformer:
    model = networks.build(block)
    state = compvis.split_fused_qkv(state, lambda channels: model.heads_for(channels)[0])
  name_of = lambda key: compvis.unet_name(key, num_res_blocks=block.num_res_blocks,
                                          attention_levels=attention_levels,
                                          spatial_transformer=block.use_spatial_transformer)
  renamed, leftovers = compvis.rename(state, torch_weights.diffusers_keys(target), name_of,
                                      prefix)
  return torch_weights.to_flax(renamed, target, unexpected=tuple(leftovers))


def import_autoencoder(source: str, block: ml_collections.ConfigDict, *,
                       subfolder: str | None = None,
                       state: Mapping[str, np.ndarray] | None = None) -> dict:
  """Our autoencoder (KL or VQ) parameters from `source` (or its contents `state`)."""
  state = _read(source, subfolder, state)
  target = factory.param_shapes(factory.build_autoencoder(block),
                                factory.autoencoder_example_inputs(block))
  dropped = [k for k in state if any(re.search(p, k) for p in AUTOENCODER_TRAINING_KEYS)]
  if dropped:
    logging.info("Leaving out %d training-only autoencoder keys (loss.*: LPIPS, "
                 "discriminator).", len(dropped))
    state = {k: v for k, v in state.items() if k not in set(dropped)}
  if not _is_compvis(state, (".down.0.", ".mid.block_1.", ".up.0.")):
    return torch_weights.to_flax(_modern_diffusers_names(state), target)
  prefix = _prefix_in(state, compvis.AUTOENCODER_PREFIX)
  name_of = lambda key: compvis.autoencoder_name(key, num_levels=len(block.ch_mult))
  renamed, leftovers = compvis.rename(state, torch_weights.diffusers_keys(target), name_of,
                                      prefix)
  return torch_weights.to_flax(renamed, target, unexpected=tuple(leftovers))


def import_conditioner(source: str, block: ml_collections.ConfigDict, *,
                       state: Mapping[str, np.ndarray] | None = None,
                       subfolder: str | None = None) -> dict:
  """A conditioner as ours: `type='class'`, LDM's ClassEmbedder (`embedding.weight`);
  `type='text'`, LDM's BERTEmbedder (x-transformers layout; `head_dim=64`); `type='clip'`,
  a CLIP text encoder in transformers' or OpenCLIP's layout (convert/text_encoders.py).
  Single files keep it under `cond_stage_model.`; a diffusers pipeline's is in
  `text_encoder/`."""
  state = _read(source, subfolder, state)
  target = factory.param_shapes(factory.build_conditioner(block),
                                factory.conditioner_example_inputs(block))
  if block.type == "clip":
    layout = text_encoders.layout_of(state)
    prefix = text_encoders.SINGLE_FILE_PREFIXES.get(layout, "")
    prefix = prefix if any(k.startswith(prefix) for k in state) else ""
    return text_encoders.import_clip(state, target, prefix=prefix, source=source,
                                     built_depth=factory.build_conditioner(block).built_depth)
  prefix = _prefix_in(state, compvis.CONDITIONER_PREFIX)
  if block.type == "class":
    return torch_weights.to_flax({k: v for k, v in state.items() if k.startswith(prefix)},
                                 target, prefix=prefix)
  return text_encoders.import_ldm_bert(state, target, prefix=prefix)


PARTS = ("network", "autoencoder", "conditioner")


def import_parts(source: str, config: ml_collections.ConfigDict, *,
                 subfolder: str | None = None, use_ema: bool = False):
  """({part: params} for each of PARTS that `config` has a block for, config), reading
  `source` once (a Stable Diffusion file is several GB and every part comes from it).

  For an LDM config (`stage='ldm'`) whose first_stage.scale_factor is unset, the returned
  config takes the `scale_factor` a CompVis checkpoint stores; with neither it is refused
  (sampling needs it).
  """
  state = files.read(source, subfolder)
  config = networks.migrate_config(config)
  if config.get("stage") == "ldm":
    config = _with_scale_factor(source, state, config)
  parts = {}
  if config.get("network") is not None:
    parts["network"] = import_unet(source, config.network, use_ema=use_ema, state=state)
  if config.get("autoencoder") is not None:
    parts["autoencoder"] = import_autoencoder(source, config.autoencoder, state=state)
  if config.get("conditioner") is not None:
    parts["conditioner"] = import_conditioner(source, config.conditioner, state=state)
  return parts, config


def _with_scale_factor(source: str, state, config):
  block = config.first_stage
  if block.get("source") == "pixels" or block.get("scale_factor") is not None:
    return config
  stored = state.get("scale_factor")
  if stored is None:
    raise ValueError(
        f"{source} stores no scale_factor and the config's first_stage.scale_factor is "
        f"unset: pass --config.first_stage.scale_factor=... (Stable Diffusion: 0.18215).")
  config = config.copy_and_resolve_references()
  config.first_stage.scale_factor = float(np.asarray(stored).reshape(()))
  return config
