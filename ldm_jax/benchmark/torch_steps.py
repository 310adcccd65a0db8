"""The diffusers (PyTorch) counterparts of `jax_steps.unet_step` and `jax_steps.vae_step`:
the same architecture (built from the same config block through
`convert.diffusers_configs`, as the parity tests do), batch, resolution and compute dtype
(bfloat16 as autocast over float32 parameters, like our bf16 compute with float32
parameters), AdamW, EMA for the UNet, PyTorch's SDPA attention (diffusers' default), on the
same device as JAX when PyTorch can use it.

Needs torch and diffusers (the test extras; the GPU image has them).
"""

import dataclasses

import numpy as np

from ldm_jax.benchmark import jax_steps
from ldm_jax.convert import diffusers_configs
from ldm_jax.diffusion import schedule_config

COMPARABLE = ("unet_step", "vae_step")


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


def unet_step(config, platform: str) -> TorchStep:
  torch, diffusers = _torch()
  device = _device(torch, platform)
  block = config.network.to_dict()
  if block.get("type") != "unet":
    raise ValueError(f"network.type={block.get('type')!r}: the diffusers comparison builds "
                     f"diffusers' UNet, so it needs network.type='unet'.")
  if block.get("use_spatial_transformer", True):
    model = diffusers.UNet2DConditionModel(**diffusers_configs.unet_condition_kwargs(block))
  else:
    model = diffusers.UNet2DModel(**diffusers_configs.unet_2d_kwargs(block))
  model.to(device).train()
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
      out = model(z_t, t, **kwargs).sample
    loss = torch.nn.functional.mse_loss(out.float(), eps)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
      torch._foreach_lerp_(ema, [p.detach().float() for p in params],  # pylint: disable=protected-access
                           1.0 - jax_steps.EMA_DECAY)
    return loss

  return TorchStep(step, _sync(torch, device), sum(p.numel() for p in params), device)


def vae_step(config, platform: str) -> TorchStep:
  torch, diffusers = _torch()
  device = _device(torch, platform)
  block = config.autoencoder
  if block.type != "kl" or block.embed_dim != block.z_channels:
    raise ValueError("--compare=diffusers times AutoencoderKL: needs autoencoder.type='kl' "
                     "with embed_dim == z_channels.")
  model = diffusers.AutoencoderKL(latent_channels=block.z_channels,
                                  **diffusers_configs.autoencoder_kwargs(block.to_dict()))
  model.to(device).train()
  params = list(model.parameters())
  optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
  images = _nchw(torch, jax_steps.vae_inputs(config, int(config.benchmark.batch_size)),
                 device)
  bf16 = config.benchmark.dtype == "bfloat16"

  def step():
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
      posterior = model.encode(images).latent_dist
      recon = model.decode(posterior.sample()).sample
    loss = (torch.abs(recon.float() - images).mean()
            + 1e-6 * posterior.kl().float().mean())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  return TorchStep(step, _sync(torch, device), sum(p.numel() for p in params), device)


BUILDERS = {"unet_step": unet_step, "vae_step": vae_step}
