"""Sampling a trained or imported latent diffusion model: `load(...)` -> `Sampler.sample(...)`.

  sampler = sampling.load("out/quickstart/ldm")            # newest checkpoint, EMA params
  result = sampler.sample(16, class_label=3, steps=25)     # uint8 [16, H, W, C]

Sources: a training run's workdir (or one of its `checkpoints/N` folders), or a directory
written by `python -m ldm_jax.convert` with an LDM config (CompVis / Stable Diffusion weights).

Conditions, by the model's `conditioning.type`: `class_label` (an int, a list, or None for
every class), `prompt` (a string or a list), `cond_image` (the low-resolution image for
super-resolution, the paired image for image -> image), `image` + `mask` (inpainting; mask 1 =
the hole to fill), `semantic_map` (integer class map). With K conditions and N samples,
sample i gets condition i * K // N: samples of one condition are adjacent, and the grid has a
row per condition when N is a multiple of K. Default N: one per condition image (K), or 16
rounded up to a multiple of K for classes and prompts.

Every input is checked before anything is compiled. The batch is sharded over all local
devices. Sample i starts from noise drawn from fold_in(seed, i), so the deterministic samplers
(ddim with eta 0, plms, dpm_solver++) give the same image i whatever the batch size and the
device count; ddpm and ddim with eta > 0 also draw per-batch noise, which depends on both.
"""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ldm_jax import visualize
from ldm_jax.convert import export
from ldm_jax.diffusion import samplers
from ldm_jax.ldm import first_stage as first_stage_lib
from ldm_jax.ldm import model as model_lib
from ldm_jax.ldm import run
from ldm_jax.models import networks
from ldm_jax.sampling import inputs as inputs_lib

_NOISE_STREAM = 2**31 - 1  # fold_in(seed, this): the per-batch noise of stochastic samplers.


@dataclasses.dataclass
class Samples:
  images: np.ndarray  # uint8 [N, H, W, C].
  conditions: list  # Per sample: its label, prompt or condition index (None: unconditional).
  columns: int  # Grid columns (a row per condition where N is a multiple of their count).
  settings: dict  # What drew them: sampler, steps, guidance, seed, checkpoint, ...

  def grid(self, padding: int = 1) -> np.ndarray:
    return visualize.make_grid(self.images.astype(np.float32) / 127.5 - 1.0, self.columns,
                               padding)


def load(workdir: str | None = None, *, checkpoint: str | None = None, step: int | None = None,
         use_ema: bool = True, config: ml_collections.ConfigDict | None = None,
         devices=None) -> "Sampler":
  """A Sampler from a run's `workdir` (newest checkpoint, or `step`) or a `checkpoint`: a run's
  `checkpoints/N` folder or a converted directory (its config.json must be an LDM config,
  or pass `config`). EMA parameters when the run kept them and `use_ema`. The batch is
  sharded over `devices` (default: all local devices)."""
  if (workdir is None) == (checkpoint is None):
    raise ValueError("Give exactly one of workdir= (a training run) or checkpoint= (a run's "
                     "checkpoints/N folder, or a converted directory).")
  if checkpoint is not None:
    path = os.path.abspath(os.path.expanduser(checkpoint))
    parent = os.path.dirname(path)
    if os.path.basename(parent) == "checkpoints" and os.path.basename(path).isdigit():
      if step is not None and step != int(os.path.basename(path)):
        raise ValueError(f"checkpoint={checkpoint!r} is step {os.path.basename(path)}, but "
                         f"step={step} was given.")
      workdir, step = os.path.dirname(parent), int(os.path.basename(path))
    elif os.path.isfile(os.path.join(path, "config.json")):
      return _load_export(path, config, devices)
    else:
      raise FileNotFoundError(
          f"checkpoint={checkpoint!r}: expected a run's checkpoints/<step> folder or a "
          f"directory written by `python -m ldm_jax.convert` (with config.json).")
  if config is not None:
    raise ValueError("config= is for converted directories; a run's workdir has its own.")
  model, params, saved, step = run.load_run(workdir, step=step, use_ema=use_ema)
  source = f"{os.path.abspath(workdir)} step {step}" + (
      " (EMA)" if use_ema and saved.get("ema") and saved.ema.decay else "")
  return Sampler(model, params, saved, step=step, source=source, devices=devices)


def _load_export(directory: str, config, devices):
  config = config or export.read_config(directory)
  if config.get("stage") != "ldm":
    raise ValueError(
        f"{directory}/config.json is not an LDM config (stage={config.get('stage')!r}): "
        f"convert with one (e.g. --config=configs/ldm_cin256.py) or pass config=.")
  parts = set(os.listdir(directory))
  config = networks.migrate_config(ml_collections.ConfigDict(config.to_dict()))
  if "autoencoder" in parts:
    config.first_stage.update(source="export", path=directory)
  elif config.first_stage.source != "pixels":
    raise FileNotFoundError(f"{directory} has no autoencoder/ weights and its config's "
                            f"first_stage.source is {config.first_stage.source!r}.")
  if "tokenizer" in parts:  # Where the converter copied them (the directory may have moved).
    config.conditioning.tokenizer = os.path.join(directory, "tokenizer")
  if config.conditioning.type == "frozen_text":
    config.conditioning.text_encoder = directory
  model = model_lib.LatentDiffusion(config)
  expected = model.param_shapes()
  params = {}
  for part in ("network", "conditioner"):
    if part not in expected:
      continue
    # Directories converted before `network` existed hold the UNet under unet/.
    folder = part if part in parts else networks.LEGACY_PARAM_KEYS.get(part, part)
    params[part] = export.read(directory, folder)
    first_stage_lib.check_shapes(expected[part], params[part], directory, folder)
  return Sampler(model, params, config, step=None, source=directory, devices=devices)


class Sampler:
  """Draws images from one model; compiled functions are kept per settings and shapes."""

  def __init__(self, model, params, config, *, step, source: str, devices=None):
    self.model, self.config, self.step, self.source = model, config, step, source
    self.cond = model.cond
    devices = jax.local_devices() if devices is None else list(devices)
    self.mesh = Mesh(np.asarray(devices), ("batch",))
    replicated = NamedSharding(self.mesh, P())
    self._batch_sharding = NamedSharding(self.mesh, P("batch"))
    self._params = jax.device_put(model.with_frozen(params), replicated)
    fs = model.first_stage_params
    self._fs_params = None if fs is None else jax.device_put(fs, replicated)
    self._compiled = {}
    self._progress = None
    side = model.latent_shape[0]
    self.image_channels = jax.eval_shape(
        lambda z: model.decode(fs, z),
        jax.ShapeDtypeStruct((1, side, side, model.first_stage.channels), jnp.float32)
    ).shape[-1]

  def set_params(self, params, step=None, source: str | None = None) -> None:
    """Other parameters of the same shapes (a training run's newer EMA): the compiled
    functions are kept."""
    self._params = jax.device_put(self.model.with_frozen(params),
                                  NamedSharding(self.mesh, P()))
    self.step = step
    self.source = source or self.source

  @property
  def mode(self) -> str:
    return self.cond.type

  @property
  def num_classes(self) -> int | None:
    return self.cond.num_classes if self.mode == "class" else None

  @property
  def input_channels(self) -> int | None:
    """Channels of the image a concatenation model takes (`cond_image`, or `image` for
    inpainting); None for the other modes."""
    return self.cond.input_channels

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  # --- settings ----------------------------------------------------------------------------
  def settings(self, *, sampler=None, steps=None, eta=None, guidance_scale=None,
               guidance_rescale=0.0) -> dict:
    """The sampling settings, the run's `config.sampling` filling what is None (its guidance
    only for a model trained with condition dropout); checked."""
    block = self.config.sampling
    sampler = block.sampler if sampler is None else sampler
    steps = int(block.steps if steps is None else steps)
    eta = float(block.eta if eta is None else eta)
    can_guide = self.mode != "none" and bool(self.cond.dropout)
    if guidance_scale is None:  # The run's setting, where the model can use it.
      guidance_scale = block.guidance_scale if can_guide else 1.0
    scale = float(guidance_scale)
    if sampler not in samplers.SAMPLERS:
      raise ValueError(f"sampler={sampler!r}: expected one of {samplers.SAMPLERS}.")
    if self.model.schedule.continuous:  # Any number of steps (schedule_config.py).
      if steps < 1:
        raise ValueError(f"steps={steps}: expected >= 1.")
    elif not 1 <= steps <= self.model.num_timesteps:
      raise ValueError(f"steps={steps}: expected 1 .. {self.model.num_timesteps} (the "
                       f"model's timesteps).")
    if eta < 0 or (eta and sampler != "ddim"):
      raise ValueError(f"eta={eta}: expected >= 0, and 0 unless sampler='ddim'.")
    if scale != 1.0 and not can_guide:
      raise ValueError(
          f"guidance_scale={scale}: classifier-free guidance needs a conditional model "
          f"trained with conditioning.dropout > 0; this one is {self.mode!r} with dropout "
          f"{self.cond.dropout}. Use guidance_scale=1.")
    if guidance_rescale and scale == 1.0:
      raise ValueError("guidance_rescale needs guidance_scale != 1.")
    return dict(sampler=sampler, steps=steps, eta=eta, guidance_scale=scale,
                guidance_rescale=float(guidance_rescale))

  # --- sampling ----------------------------------------------------------------------------
  def sample(self, num_samples: int | None = None, *, class_label=None, prompt=None,
             negative_prompt=None, cond_image=None, image=None, mask=None,
             semantic_map=None, height: int | None = None, width: int | None = None,
             sampler=None, steps=None, eta=None, guidance_scale=None,
             guidance_rescale=0.0, seed: int = 0, batch_size: int | None = None,
             progress: bool = False, paste_known: bool = True,
             first_index: int = 0) -> Samples:
    """Draws `num_samples` images (uint8). Images given as uint8 are in [0, 255], as float
    in [-1, 1]; masks are 1 (or True, or 255) in the hole. `negative_prompt` (one, or one
    per prompt) replaces the empty caption in guidance's unconditional half. `height` and
    `width` (pixels, multiples of the latent factor times the network's downsampling; any
    aspect ratio) replace the model's image size for unconditional, class and text models.
    `paste_known` puts the unmasked pixels of an inpainting image back into the samples (as
    CompVis' inpainting script). `first_index` (a multiple of the batch size) numbers these
    samples from there: drawn in parts, a large set gets the images one call would give."""
    settings = self.settings(sampler=sampler, steps=steps, eta=eta,
                             guidance_scale=guidance_scale, guidance_rescale=guidance_rescale)
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
      raise ValueError(f"seed={seed!r}: expected an integer in 0 .. 2**32 - 1.")
    given = dict(class_label=class_label, prompt=prompt, negative_prompt=negative_prompt,
                 cond_image=cond_image, image=image, mask=mask, semantic_map=semantic_map)
    cond = inputs_lib.build(self, given, num_samples, height, width)
    batch_size = self.batch_size_for(batch_size, cond.num_samples)
    if first_index < 0 or first_index % batch_size:
      raise ValueError(f"first_index={first_index}: expected a multiple of the batch size "
                       f"({batch_size}) that is >= 0.")
    count = cond.num_samples
    batches = math.ceil(count / batch_size)
    fn = self._function(settings, cond.side, batch_size, progress)
    images = []
    if progress:
      from tqdm import auto as tqdm  # pylint: disable=import-outside-toplevel
      calls = settings["steps"] + (1 if settings["sampler"] == "plms" else 0)
      self._progress = tqdm.tqdm(total=batches * calls, unit="step",
                                 desc=f"{settings['sampler']} x {count}")
    try:
      for b in range(batches):
        index = np.minimum(np.arange(b * batch_size, (b + 1) * batch_size), count - 1)
        fields = {k: v[index] for k, v in cond.fields.items()}
        placed = jax.device_put((fields, (first_index + index).astype(np.int32)),
                                self._batch_sharding)
        out = fn(self._params, self._fs_params, *placed, np.uint32(seed),
                 np.int32(first_index // batch_size + b))
        images.append(np.asarray(out)[:count - b * batch_size])
    finally:
      if self._progress is not None:
        self._progress.close()
        self._progress = None
    images = np.concatenate(images)
    if self.mode == "inpainting" and paste_known:
      hole = cond.fields["mask"]
      images = hole * images + (1.0 - hole) * cond.fields["image"]
    down = self.model.first_stage.downsample
    settings.update(mode=self.mode, num_samples=count, seed=int(seed), batch_size=batch_size,
                    first_index=int(first_index), num_devices=self.num_devices,
                    height=cond.side[0] * down, width=cond.side[1] * down,
                    image_size=cond.side[0] * down if cond.side[0] == cond.side[1] else None,
                    negative_prompt=negative_prompt, checkpoint=self.source, step=self.step,
                    paste_known=bool(paste_known) if self.mode == "inpainting" else None)
    return Samples(visualize.to_uint8(images), cond.per_sample, cond.columns, settings)

  def batch_size_for(self, batch_size, count: int) -> int:
    """The batch of `count` samples: `batch_size` checked, or the default."""
    devices = self.num_devices
    if batch_size is None:
      return devices * math.ceil(min(count, 32) / devices)
    if batch_size < 1 or batch_size % devices:
      raise ValueError(f"batch_size={batch_size}: expected a positive multiple of the "
                       f"{devices} local devices (the batch is sharded over them).")
    return batch_size

  def noise(self, seed: int, index, side: tuple[int, int]) -> np.ndarray:
    """The starting latents [len(index), h, w, c] of samples `index` under `seed` (what
    `sample` starts from: each from fold_in(seed, i))."""
    root = jax.random.key(seed)
    return np.asarray(jax.vmap(lambda i: self.model.noise(jax.random.fold_in(root, i), 1,
                                                          side)[0])(jnp.asarray(index)))

  def _function(self, settings: dict, side: tuple[int, int], batch_size: int,
                progress: bool):
    key = (tuple(sorted(settings.items())), side, batch_size, progress)
    if key not in self._compiled:
      self._compiled[key] = jax.jit(
          lambda *args: self._draw(*args, settings=settings, side=side, progress=progress),
          out_shardings=self._batch_sharding)
    return self._compiled[key]

  def _tick(self, t):
    del t
    if self._progress is not None:
      self._progress.update(1)

  def _draw(self, params, fs_params, fields, index, seed, batch_index, *, settings, side,
            progress):
    root = jax.random.key(seed)
    noise = jax.vmap(lambda i: self.model.noise(jax.random.fold_in(root, i), 1, side)[0])(
        index)
    key = jax.random.fold_in(jax.random.fold_in(root, _NOISE_STREAM), batch_index)
    return self.model.sample(
        params, fs_params, fields, noise=noise, key=key, sampler=settings["sampler"],
        steps=settings["steps"], eta=settings["eta"],
        guidance_scale=settings["guidance_scale"],
        guidance_rescale=settings["guidance_rescale"],
        on_call=self._tick if progress else None)
