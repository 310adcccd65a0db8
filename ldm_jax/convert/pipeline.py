"""Whole text-to-image pipelines -> one directory that `sample.py --checkpoint=DIR` samples.

  python -m ldm_jax.convert v1-5-pruned-emaonly.safetensors --tokenizer=TOKENIZER --out=DIR
  python -m ldm_jax.convert ./stable-diffusion-2-1 --out=DIR          (a diffusers folder)

Sources: a CompVis / Stability single file (.ckpt / .safetensors) of Stable Diffusion 1.x,
2.x or LDM txt2img-1p4B, or a diffusers pipeline folder (model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/). The family comes from the text encoder's layout
(convert/infer.py); every architecture is read off the weights (or the folder's configs),
never assumed, and each part is imported strictly (convert/load.py).

What is written: network/, autoencoder/, conditioner/ (Orbax), tokenizer/ (the tokenizer
files, copied: single files hold none, so `tokenizer` must name them), and config.json, the
family's recipe (ldm_jax/recipes/stable_diffusion.py) with the architectures found, the
schedule, the prediction type (single files do not say it: SD 2.x 768-v models need
prediction='v'), the latent scale factor and Stable Diffusion's scheduler settings.
"""

import json
import os
import shutil

from absl import logging
import ml_collections
import numpy as np

from ldm_jax.convert import export
from ldm_jax.convert import files
from ldm_jax.convert import infer
from ldm_jax.convert import load
from ldm_jax.diffusion import schedules
from ldm_jax.models import tokenizer as tokenizer_lib
from ldm_jax.recipes import stable_diffusion

PREDICTIONS = ("eps", "v")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.txt")
_RECIPE = {"sd1": "v1", "sd2": "v2", "ldm_txt2img": "ldm_txt2img"}
# The beta schedule every supported family was trained with (diffusers' 'scaled_linear').
_SD_BETAS = ("scaled_linear", 0.00085, 0.012, 1000)


def _family_config(fam: str) -> ml_collections.ConfigDict:
  """The family's recipe (ldm_jax/recipes/stable_diffusion.py), weights from the export."""
  config = stable_diffusion.get_config(f"model={_RECIPE[fam]}")
  config.first_stage.update(source="export", scale_factor=stable_diffusion.SCALE_FACTOR)
  return config


def _check_parts(config, source: str) -> None:
  """The parts belong together, as a text-to-image pipeline."""
  width, context = config.conditioner.width, config.network.context_dim
  if width != context:
    raise ValueError(f"{source}: the text encoder's width is {width} but the UNet attends "
                     f"to a context of {context}: the parts do not belong together.")
  latent, net = config.autoencoder.embed_dim, config.network
  if net.in_channels != latent or net.out_channels != latent:
    raise ValueError(f"{source}: the UNet takes {net.in_channels} and gives "
                     f"{net.out_channels} channels, the autoencoder's latents have {latent}: "
                     f"an inpainting, depth or upscaling UNet, not a text-to-image pipeline "
                     f"this converter knows.")


def _check_stored_schedule(state, source: str) -> None:
  """A CompVis file stores its schedule's alphas_cumprod: it must be Stable Diffusion's."""
  stored = state.get("alphas_cumprod")
  if stored is None:
    return
  ours = np.asarray(schedules.stable_diffusion(len(stored)).alphas_cumprod, np.float64)
  error = float(np.abs(np.asarray(stored, np.float64) - ours).max())
  # Half-precision files store it rounded: near 1, fp16 steps by 4.9e-4, bf16 by 3.9e-3.
  bound = 1e-5 if np.dtype(stored.dtype).itemsize >= 4 else 4e-3
  if len(stored) != 1000 or error > bound:
    raise ValueError(f"{source}: its alphas_cumprod ({len(stored)} steps) differ from Stable "
                     f"Diffusion's schedule by up to {error:.3g}: not a schedule this "
                     f"converter knows.")


def _tokenizer_kind(config) -> str:
  return "clip" if config.conditioner.type == "clip" else "wordpiece"


def _tokenizer_files(path: str) -> list[str]:
  """The files to copy of a tokenizer `path`: a folder's tokenizer files, or the one file
  (vocab.json and merges.txt stand for their folder, as for load_tokenizer)."""
  path = os.path.expanduser(path)
  if os.path.basename(path) in ("vocab.json", "merges.txt"):
    path = os.path.dirname(path) or "."
  if os.path.isfile(path):
    return [path]
  return [os.path.join(path, n) for n in TOKENIZER_FILES
          if os.path.isfile(os.path.join(path, n))]


def _from_single_file(source: str, *, use_ema: bool):
  state = files.read(source)
  fam = infer.family(state, source)
  config = _family_config(fam)
  config.network = infer.unet_block(state, fam, source)
  config.autoencoder = infer.autoencoder_block(state, source)
  config.conditioner = infer.text_encoder_block(state, fam, source)
  _check_parts(config, source)
  _check_stored_schedule(state, source)
  if state.get("scale_factor") is not None:
    config.first_stage.scale_factor = float(np.asarray(state["scale_factor"]).reshape(()))
  parts = {"network": load.import_unet(source, config.network, use_ema=use_ema, state=state),
           "autoencoder": load.import_autoencoder(source, config.autoencoder, state=state),
           "conditioner": load.import_conditioner(source, config.conditioner, state=state)}
  return parts, config, fam


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: expected a diffusers pipeline folder "
                            f"(model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
                            f"scheduler/).")
  with open(path) as f:
    return json.load(f)


def _scheduler_settings(folder: str, config) -> None:
  scheduler = _read_json(os.path.join(folder, "scheduler", "scheduler_config.json"))
  betas = (scheduler.get("beta_schedule"), scheduler.get("beta_start"),
           scheduler.get("beta_end"), scheduler.get("num_train_timesteps", 1000))
  if betas != _SD_BETAS:
    raise ValueError(f"{folder}/scheduler: beta schedule {betas}; this converter knows "
                     f"Stable Diffusion's {_SD_BETAS}.")
  prediction = scheduler.get("prediction_type", "epsilon")
  if prediction not in ("epsilon", "v_prediction"):
    raise ValueError(f"{folder}/scheduler: prediction_type={prediction!r}; expected "
                     f"'epsilon' or 'v_prediction'.")
  config.diffusion.prediction = "v" if prediction == "v_prediction" else "eps"
  if scheduler.get("rescale_betas_zero_snr"):
    config.diffusion.zero_terminal_snr = True
  spacing = scheduler.get("timestep_spacing", "leading")
  if spacing != "leading":  # A sampling choice, not the model's: said, not refused.
    logging.warning("%s/scheduler: timestep_spacing=%r; our ddim, ddpm and plms walk "
                    "diffusers' 'leading' timesteps and dpm_solver++ its 'linspace' ones, so "
                    "samples differ from that scheduler's.", folder, spacing)
  # diffusers' defaults: DDIMScheduler sets alpha to one past the last step, PNDM does not.
  alpha_to_one = scheduler.get("set_alpha_to_one",
                               scheduler.get("_class_name") == "DDIMScheduler")
  config.sampling.update(steps_offset=int(scheduler.get("steps_offset", 0)),
                         set_alpha_to_one=bool(alpha_to_one))


def _from_diffusers(folder: str):
  index = _read_json(os.path.join(folder, "model_index.json"))
  missing = [p for p in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
             if p not in index]
  if missing:
    raise ValueError(f"{folder}/model_index.json names no {missing}: expected a text-to-"
                     f"image pipeline (found {sorted(k for k in index if not k.startswith('_'))}).")
  unet_state, unet_config = files.read_folder(folder, "unet")
  vae_state, vae_config = files.read_folder(folder, "vae")
  text_state, text_config = files.read_folder(folder, "text_encoder")
  text = infer.text_encoder_from_diffusers(text_config, f"{folder}/text_encoder")
  fam = "sd2" if text.activation == "gelu" else "sd1"
  config = _family_config(fam)
  config.network = infer.unet_from_diffusers(unet_config, f"{folder}/unet")
  config.autoencoder = infer.autoencoder_from_diffusers(vae_config)
  config.conditioner = text
  config.conditioning.pad = None  # The tokenizer folder's own settings say.
  _check_parts(config, folder)
  _scheduler_settings(folder, config)
  config.first_stage.scale_factor = float(vae_config.get("scaling_factor",
                                                         stable_diffusion.SCALE_FACTOR))
  parts = {"network": load.import_unet(folder, config.network, state=unet_state),
           "autoencoder": load.import_autoencoder(folder, config.autoencoder,
                                                  state=vae_state),
           "conditioner": load.import_conditioner(folder, config.conditioner,
                                                  state=text_state)}
  return parts, config, fam


def convert(source: str, out: str, *, tokenizer: str | None = None,
            prediction: str | None = None, use_ema: bool = False) -> ml_collections.ConfigDict:
  """Converts the pipeline `source` into the new directory `out`; returns its config."""
  out = export.check_new(out)  # Before reading gigabytes.
  if prediction not in (None, *PREDICTIONS):
    raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}.")
  if os.path.isdir(source):
    if use_ema:
      raise ValueError("use_ema: a diffusers folder holds one set of UNet weights.")
    parts, config, fam = _from_diffusers(source)
    tokenizer = tokenizer or os.path.join(source, "tokenizer")
  else:
    parts, config, fam = _from_single_file(source, use_ema=use_ema)
    if not tokenizer:
      wanted = ("bert-base-uncased's vocab.txt" if fam == "ldm_txt2img" else
                "CLIP's vocab.json + merges.txt (e.g. a diffusers pipeline's tokenizer/)")
      raise ValueError(f"{source} holds no tokenizer: pass tokenizer=DIR, {wanted}.")
  if prediction is not None:
    config.diffusion.prediction = prediction
  if fam == "sd2" and config.diffusion.prediction == "v":
    config.data.image_size = 768  # SD 2.x's v-prediction models are its 768 px ones.
  if fam == "sd2" and prediction is None and not os.path.isdir(source):
    logging.warning("%s: SD 2.x single files do not say what their UNet predicts; eps is "
                    "assumed (the 512 px base models). The 768 px models predict v: convert "
                    "them with --prediction=v.", source)
  # The tokenizer must load and be of the kind the text encoder reads, before writing.
  pad = config.conditioning.get("pad")
  tokenizer = os.path.expanduser(tokenizer)
  loaded = tokenizer_lib.load_tokenizer(tokenizer, kind=_tokenizer_kind(config),
                                        pad=int(pad) if pad and pad.isdigit() else pad)
  if loaded.vocab_size > config.conditioner.vocab_size:
    raise ValueError(f"tokenizer={tokenizer!r} has {loaded.vocab_size} tokens; the text "
                     f"encoder embeds {config.conditioner.vocab_size}.")
  config.conditioning.update(tokenizer=os.path.join(out, "tokenizer"))
  if config.conditioning.type == "frozen_text":
    config.conditioning.text_encoder = out
  config.first_stage.path = out
  logging.info("%s: %s pipeline, %s-prediction, scale factor %g.", source, fam,
               config.diffusion.prediction, config.first_stage.scale_factor)
  # Written beside `out`, then renamed: an interrupted conversion leaves no partial `out`.
  partial = out.rstrip(os.sep) + ".incomplete"
  if os.path.exists(partial):
    raise FileExistsError(f"{partial} exists: a conversion into {out} stopped part-way. "
                          f"Delete it and convert again.")
  export.write(partial, parts, config)
  os.makedirs(os.path.join(partial, "tokenizer"))
  for path in _tokenizer_files(tokenizer):
    shutil.copy2(path, os.path.join(partial, "tokenizer", os.path.basename(path)))
  os.rename(partial, out)
  return config
