"""The frozen first stage of a latent diffusion model: an autoencoder, or pixels (f = 1).

`load(config)` reads `config.first_stage` and returns `(FirstStage, params)`:
  source='workdir': an autoencoder trained by this library (`train.py` with stage
      'autoencoder'); its newest checkpoint's parameters, the architecture from the config
      saved with them and `scale_factor` from `<workdir>/autoencoder_final.json`.
  source='export': a directory written by `python -m ldm_jax.convert` (CompVis / diffusers
      weights); `first_stage.scale_factor` must be given (Stable Diffusion: 0.18215).
  source='random': an untrained autoencoder built from `config.autoencoder`, for smoke
      tests only (a warning says so).
  source='pixels': no autoencoder; diffusion in pixel space (the paper's LDM-1).
The parameters stay outside the training state: never in an optimiser, never donated.
Latents are `scale_factor * z`, with z a posterior sample (KL; the mode with no key) or the
pre-quantisation latents (VQ), as CompVis `get_first_stage_encoding`; decoding divides by
the factor and, for VQ, quantises first.
"""

import dataclasses
import hashlib
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ldm_jax.models import factory
from ldm_jax.models.distributions import DiagonalGaussian

SOURCES = ("workdir", "export", "random", "pixels")
# Settings that change how an autoencoder runs, not what its parameters are.
EXECUTION_KEYS = ("dtype", "param_dtype", "remat", "attention_impl")


@dataclasses.dataclass(frozen=True)
class FirstStage:
  """Pure encode/decode between images [-1, 1] and scaled latents; params passed in."""
  model: nn.Module | None
  kind: str  # 'kl', 'vq' or 'pixels'.
  scale_factor: float
  channels: int  # Latent channels.
  downsample: int  # Image side / latent side.
  description: str
  image_channels: int = 3  # Channels of the images it encodes and decodes.

  def latent_shape(self, image_size: int) -> tuple[int, int, int]:
    if image_size % self.downsample:
      raise ValueError(f"data.image_size={image_size} is not a multiple of the first "
                       f"stage's downsampling factor {self.downsample}.")
    side = image_size // self.downsample
    return side, side, self.channels

  def moments(self, params, images):
    """The encoder's raw output: [mean | logvar] for KL, pre-quantisation latents for VQ,
    the images for pixels (what a latent cache stores)."""
    images = images.astype(jnp.float32)
    if self.kind == "pixels":
      return images
    if self.kind == "kl":
      return self.model.apply({"params": params}, images, method=_kl_moments)
    return self.model.apply({"params": params}, images, method="encode").astype(jnp.float32)

  def from_moments(self, moments, key=None):
    """Scaled latents from `moments`; KL samples the posterior when `key` is given."""
    if self.kind == "kl":
      posterior = DiagonalGaussian.from_moments(moments)
      z = posterior.sample(key) if key is not None else posterior.mode()
    else:
      z = moments
    return z.astype(jnp.float32) * self.scale_factor

  def encode(self, params, images, key=None):
    """Scaled latents of `images`; KL models sample the posterior when `key` is given."""
    return self.from_moments(self.moments(params, images), key)

  def decode(self, params, latents):
    z = latents.astype(jnp.float32) / self.scale_factor
    if self.kind == "pixels":
      return z
    if self.kind == "vq":
      z = self.model.apply({"params": params}, z, method="quantize_latents").latents
    return self.model.apply({"params": params}, z, method="decode").astype(jnp.float32)


def _kl_moments(module, images):
  return module.quant_conv(module.encoder(images)).astype(jnp.float32)


def fingerprint(params) -> str:
  """sha256 of the parameters' float32 bytes in tree order (ties a latent cache to them)."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return digest.hexdigest()


def _structural(block) -> dict:
  return {k: v for k, v in dict(block).items() if k not in EXECUTION_KEYS}


def _check_same_architecture(given, saved, where: str) -> ml_collections.ConfigDict:
  """The saved architecture, with the given block's execution settings applied."""
  saved = ml_collections.ConfigDict(saved)
  if given is None:
    return saved
  given_s = json.loads(ml_collections.ConfigDict(_structural(given)).to_json_best_effort())
  saved_s = json.loads(ml_collections.ConfigDict(_structural(saved)).to_json_best_effort())
  differing = sorted(k for k in set(given_s) | set(saved_s) if given_s.get(k) != saved_s.get(k))
  if differing:
    raise ValueError(
        f"config.autoencoder differs from the autoencoder in {where} at "
        f"{', '.join(f'{k} (config {given_s.get(k)!r}, saved {saved_s.get(k)!r})' for k in differing)}"
        f". Set config.autoencoder=None to take the saved architecture.")
  for key in EXECUTION_KEYS:
    if key in given:
      saved[key] = given[key]
  return saved


def _from_workdir(workdir: str, given_block):
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"first_stage.path={workdir!r} has no checkpoints/ folder: expected the --workdir of "
        f"an autoencoder run (train.py with an autoencoder config).")
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True)) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"first_stage.path={workdir!r}: no checkpoint in {directory}.")
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    saved = saved.config
    if saved.get("stage") != "autoencoder":
      raise ValueError(f"first_stage.path={workdir!r} holds a {saved.get('stage')!r} run, "
                       f"not an autoencoder run.")
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  params = state.state["params"]["generator"]["autoencoder"]
  block = _check_same_architecture(given_block, saved["autoencoder"], workdir)
  final = os.path.join(os.path.abspath(workdir), "autoencoder_final.json")
  scale = None
  if os.path.exists(final):
    with open(final) as f:
      results = json.load(f)
    scale = results.get("scale_factor")
    if results.get("step") != step:
      logging.warning("%s was written at step %s; the newest checkpoint is step %d.", final,
                      results.get("step"), step)
  elif step < saved.get("num_steps", step):
    logging.warning("The autoencoder in %s stopped at step %d of %d (not finished).",
                    workdir, step, saved["num_steps"])
  return params, block, scale, f"autoencoder run {workdir} (step {step})"


def _from_export(directory: str, given_block):
  from ldm_jax.convert import export  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(os.path.join(directory, "config.json")):
    raise FileNotFoundError(f"first_stage.path={directory!r} has no config.json: expected a "
                            f"directory written by `python -m ldm_jax.convert`.")
  saved = export.read_config(directory)
  if "autoencoder" not in saved:
    raise ValueError(f"first_stage.path={directory!r} holds no autoencoder (its config has "
                     f"{sorted(saved)}).")
  block = _check_same_architecture(given_block, saved.autoencoder.to_dict(), directory)
  return export.read(directory, "autoencoder"), block, None, f"converted weights {directory}"


def load(config: ml_collections.ConfigDict, rng=None):
  """(FirstStage, params or None) from config.first_stage (and config.autoencoder)."""
  block = config.first_stage
  source = block.get("source")
  if source not in SOURCES:
    raise ValueError(f"first_stage.source={source!r}: expected one of {SOURCES}.")
  scale = block.get("scale_factor")
  given = config.get("autoencoder")
  if source == "pixels":
    if given is not None:
      raise ValueError("first_stage.source='pixels' trains in pixel space: set "
                       "config.autoencoder=None.")
    channels = config.data.get("channels") or 3
    return FirstStage(None, "pixels", float(scale or 1.0), channels, 1, "pixels",
                      channels), None
  if source in ("workdir", "export"):
    if not block.get("path"):
      raise ValueError(f"first_stage.source={source!r} needs first_stage.path.")
    path = os.path.expanduser(block.path)
    loader = _from_workdir if source == "workdir" else _from_export
    params, arch, saved_scale, description = loader(path, given)
    scale = scale if scale is not None else saved_scale
  else:
    if given is None:
      raise ValueError("first_stage.source='random' builds config.autoencoder, which is None.")
    arch, params = given, None
    description = "an UNTRAINED random autoencoder (smoke tests only)"
    scale = 1.0 if scale is None else scale
  if scale is None:
    raise ValueError(f"first_stage.scale_factor is not set and {block.path} gives none: set "
                     f"it (1 / std of the latents; Stable Diffusion's VAE: 0.18215).")
  if not (math.isfinite(float(scale)) and float(scale) > 0):
    raise ValueError(f"first_stage.scale_factor={scale}: expected a positive number.")
  model = factory.build_autoencoder(arch)
  if params is None:
    inputs = factory.autoencoder_example_inputs(arch)
    rng = jax.random.key(0) if rng is None else rng
    # Compiled as one program: op by op, every layer's initialiser and forward op is
    # compiled on its own (a tiny autoencoder, same load: 4.4 s against 10.8 s; the same
    # numbers, bit for bit).
    # Kept as JAX arrays: under jax.eval_shape the whole stage builds without a compile
    # (tests/configs_test.py traces the full-size configs so).
    params = jax.jit(lambda key: jax.tree.map(
        lambda x: x.astype(jnp.float32),
        model.init({"params": key, "sample": key}, *inputs)["params"]))(rng)
    logging.warning("first_stage.source='random': the LDM trains on the latents of an "
                    "untrained autoencoder. Use this for smoke tests only.")
  else:
    expected = factory.param_shapes(model, factory.autoencoder_example_inputs(arch))
    check_shapes(expected, params, description)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  stage = FirstStage(model, arch.type, float(scale), int(arch.embed_dim),
                     2 ** (len(arch.ch_mult) - 1), description, int(arch.get("out_ch", 3)))
  logging.info("First stage: %s; %s latents, f=%d, scale_factor=%.6g.", description,
               stage.kind, stage.downsample, stage.scale_factor)
  return stage, params


def check_shapes(expected, params, where: str, what: str = "autoencoder") -> None:
  """Raises naming the first mismatching or unexpected leaves of `params`."""
  flat_e = {"/".join(map(str, k)): v.shape for k, v in
            jax.tree_util.tree_flatten_with_path(expected)[0]}
  flat_p = {"/".join(map(str, k)): np.shape(v) for k, v in
            jax.tree_util.tree_flatten_with_path(params)[0]}
  bad = [f"{k}: {flat_p.get(k)} (expected {s})" for k, s in flat_e.items()
         if flat_p.get(k) != s]
  extra = sorted(set(flat_p) - set(flat_e))
  if bad or extra:
    raise ValueError(f"The {what} parameters from {where} do not fit its architecture: "
                     f"{'; '.join(bad[:5] + [f'unexpected {k}' for k in extra[:5]])}.")
