"""The diffusers (PyTorch) counterparts of `jax_steps`' unet_step, vae_step, sampling,
vae_encode and vae_decode: the same architecture (built from the same config block through
`convert.diffusers_configs`, as the parity tests do), batch, resolution and compute dtype, on
the same device as JAX when PyTorch can use it, with PyTorch's SDPA attention (diffusers'
default). Training steps run bfloat16 as autocast over float32 parameters (like our bf16
compute with float32 parameters), AdamW, EMA for the UNet; inference (sampling, the VAE's
encoder and decoder) runs as diffusers' pipelines do, on bfloat16 weights. `compile=True`
wraps the models in torch.compile (its first call, in the warm-up, compiles).

Needs torch and diffusers (the test extras; carried to a GPU machine by benchmarks/gpu.sh).
"""

import dataclasses

import numpy as np

from ldm_jax.benchmark import jax_steps
from ldm_jax.convert import diffusers_configs
from ldm_jax.diffusion import schedule_config



class NotComparable(ValueError):
  """This point's measurement has no diffusers counterpart here (the record says why)."""


@dataclasses.dataclass
class TorchStep:
  call: object  # step() -> loss tensor.
  sync: object  # Waits for the device.
  num_params: int
  device: str


def _torch():
  try:
    import diffusers  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("--compare=diffusers needs torch and diffusers "
                      "(pip install -e '.[test]').") from e
  return torch, diffusers


def _device(torch, platform: str) -> str:
  if platform == "gpu" and torch.cuda.is_available():
    return "cuda"
  return "cpu"


def _nchw(torch, array, device):
  array = np.asarray(array)
  if array.ndim == 4:
    array = np.transpose(array, (0, 3, 1, 2))
  return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def _sync(torch, device):
  return (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)


def _unet(config, diffusers):
  block = config.network.to_dict()
  if block.get("type") != "unet":
    raise NotComparable(f"network.type={block.get('type')!r}: the diffusers comparison builds "
                     f"diffusers' UNet, so it needs network.type='unet'.")
  if block.get("use_spatial_transformer", True):
    return diffusers.UNet2DConditionModel(**diffusers_configs.unet_condition_kwargs(block))
  return diffusers.UNet2DModel(**diffusers_configs.unet_2d_kwargs(block))


def _vae(config, diffusers):
  block = config.get("autoencoder")
  if block is None or block.type != "kl" or block.embed_dim != block.z_channels:
    raise NotComparable("--compare=diffusers times diffusers' AutoencoderKL: needs "
                     "autoencoder.type='kl' with embed_dim == z_channels.")
  return diffusers.AutoencoderKL(latent_channels=block.z_channels,
                                 **diffusers_configs.autoencoder_kwargs(block.to_dict()))


def _maybe_compile(torch, fn, compile: bool):  # pylint: disable=redefined-builtin
  return torch.compile(fn) if compile else fn


def unet_step(config, platform: str, compile: bool = False) -> TorchStep:  # pylint: disable=redefined-builtin
  torch, diffusers = _torch()
  device = _device(torch, platform)
  model = _unet(config, diffusers)
  model.to(device).train()
  forward = _maybe_compile(torch, model, compile)
  params = [p for p in model.parameters()]
  optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
  ema = [p.detach().clone().float() for p in params]
  schedule = schedule_config.from_config(config.diffusion).discrete
  alphas = torch.tensor(np.asarray(schedule.alphas_cumprod), dtype=torch.float32,
                        device=device)
  inputs = {k: _nchw(torch, v, device) for k, v in
            jax_steps.unet_inputs(config, int(config.benchmark.batch_size)).items()}
  if "label" in inputs:
    inputs["label"] = inputs["label"].long()
  bf16 = config.benchmark.dtype == "bfloat16"

  def step():
    z0 = inputs["latents"]
    t = torch.randint(0, len(alphas), (z0.shape[0],), device=device)
    eps = torch.randn_like(z0)
    a = alphas[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z0 + (1.0 - a).sqrt() * eps
    if "concat" in inputs:
      z_t = torch.cat([z_t, inputs["concat"]], dim=1)
    kwargs = {"class_labels": inputs.get("label")}
    if "context" in inputs:
      kwargs["encoder_hidden_states"] = inputs["context"]
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
      out = forward(z_t, t, **kwargs).sample
    loss = torch.nn.functional.mse_loss(out.float(), eps)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
      torch._foreach_lerp_(ema, [p.detach().float() for p in params],  # pylint: disable=protected-access
                           1.0 - jax_steps.EMA_DECAY)
    return loss

  return TorchStep(step, _sync(torch, device), sum(p.numel() for p in params), device)


def vae_step(config, platform: str, compile: bool = False) -> TorchStep:  # pylint: disable=redefined-builtin
  torch, diffusers = _torch()
  device = _device(torch, platform)
  model = _vae(config, diffusers)
  model.to(device).train()
  encode = _maybe_compile(torch, model.encode, compile)
  decode = _maybe_compile(torch, model.decode, compile)
  params = list(model.parameters())
  optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
  images = _nchw(torch, jax_steps.vae_inputs(config, int(config.benchmark.batch_size)),
                 device)
  bf16 = config.benchmark.dtype == "bfloat16"

  def step():
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
      posterior = encode(images).latent_dist
      recon = decode(posterior.sample()).sample
    loss = (torch.abs(recon.float() - images).mean()
            + 1e-6 * posterior.kl().float().mean())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  return TorchStep(step, _sync(torch, device), sum(p.numel() for p in params), device)


def _inference_dtype(torch, config):
  return torch.bfloat16 if config.benchmark.dtype == "bfloat16" else torch.float32


def _vae_inference(config, platform: str, compile: bool, method: str, inputs,  # pylint: disable=redefined-builtin
                   output) -> TorchStep:
  """The VAE's `method` ('encode' / 'decode') on `inputs` (NHWC NumPy), without gradients;
  `output` picks the tensor of its result."""
  torch, diffusers = _torch()
  device, dtype = _device(torch, platform), _inference_dtype(torch, config)
  model = _vae(config, diffusers).to(device=device, dtype=dtype).eval()
  fn = _maybe_compile(torch, getattr(model, method), compile)
  x = _nchw(torch, inputs, device).to(dtype)

  @torch.no_grad()
  def step():
    return output(fn(x))

  return TorchStep(step, _sync(torch, device), sum(p.numel() for p in model.parameters()),
                   device)


def vae_encode(config, platform: str, compile: bool = False) -> TorchStep:  # pylint: disable=redefined-builtin
  return _vae_inference(config, platform, compile, "encode",
                        jax_steps.vae_inputs(config, int(config.benchmark.batch_size)),
                        lambda out: out.latent_dist.mean)


def vae_decode(config, platform: str, compile: bool = False) -> TorchStep:  # pylint: disable=redefined-builtin
  return _vae_inference(config, platform, compile, "decode",
                        jax_steps.vae_latents(config, int(config.benchmark.batch_size)),
                        lambda out: out.sample)


def sampling(config, platform: str, compile: bool = False) -> TorchStep:  # pylint: disable=redefined-builtin
  """diffusers' DDIM loop as its pipelines run it (the scheduler on the schedule's betas,
  guidance by a doubled batch against a zero condition, as `jax_steps.sampling`), then the
  VAE's decoder; bfloat16 weights."""
  torch, diffusers = _torch()
  device, dtype = _device(torch, platform), _inference_dtype(torch, config)
  unet = _unet(config, diffusers).to(device=device, dtype=dtype).eval()
  vae = _vae(config, diffusers).to(device=device, dtype=dtype).eval()
  forward = _maybe_compile(torch, unet, compile)
  alphas = np.asarray(schedule_config.from_config(config.diffusion).discrete.alphas_cumprod,
                      np.float64)
  betas = 1.0 - alphas / np.concatenate([[1.0], alphas[:-1]])
  scheduler = diffusers.DDIMScheduler(num_train_timesteps=len(betas), trained_betas=betas,
                                      clip_sample=False, set_alpha_to_one=False,
                                      steps_offset=int(config.sampling.get("steps_offset", 0)))
  inputs = {k: _nchw(torch, v, device) for k, v in
            jax_steps.unet_inputs(config, int(config.benchmark.batch_size), seed=2).items()}
  if "concat" in inputs:
    raise NotComparable("benchmark sampling --compare: concatenated conditions are not "
                     "compared (diffusers' loop here is text/class/unconditional).")
  scale = float(config.benchmark.guidance_scale)
  scaling = float(config.first_stage.scale_factor or 1.0)
  shape = tuple(inputs["latents"].shape)

  def conditions(doubled: bool):
    kwargs = {}
    if "context" in inputs:
      context = inputs["context"].to(dtype)
      kwargs["encoder_hidden_states"] = (torch.cat([torch.zeros_like(context), context])
                                         if doubled else context)
    if "label" in inputs:
      label = inputs["label"].long()
      kwargs["class_labels"] = (torch.cat([torch.zeros_like(label), label]) if doubled
                                else label)
    return kwargs

  guided = scale != 1.0
  kwargs = conditions(guided)

  @torch.no_grad()
  def step():
    scheduler.set_timesteps(int(config.benchmark.sampling_steps), device=device)
    latents = torch.randn(shape, device=device, dtype=dtype)
    for t in scheduler.timesteps:
      model_in = torch.cat([latents, latents]) if guided else latents
      eps = forward(model_in, t, **kwargs).sample
      if guided:
        uncond, cond = eps.chunk(2)
        eps = uncond + scale * (cond - uncond)
      latents = scheduler.step(eps, t, latents).prev_sample
    return vae.decode(latents / scaling).sample

  count = sum(p.numel() for p in unet.parameters())
  return TorchStep(step, _sync(torch, device), count, device)


BUILDERS = {"unet_step": unet_step, "vae_step": vae_step, "sampling": sampling,
            "vae_encode": vae_encode, "vae_decode": vae_decode}
