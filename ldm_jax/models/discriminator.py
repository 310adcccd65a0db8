"""The PatchGAN discriminator of taming-transformers / LDM's autoencoder losses.

`NLayerDiscriminator` maps an NHWC image to a map of real/fake logits, one per receptive-field
patch. The layers are those of taming's `NLayerDiscriminator` (pix2pix): a 4x4 stride-2 conv
with bias + LeakyReLU(0.2); `n_layers - 1` blocks of 4x4 stride-2 conv (no bias) + BatchNorm +
LeakyReLU; one 4x4 stride-1 conv (no bias) + BatchNorm + LeakyReLU; a 4x4 stride-1 conv to one
channel, with bias. Every conv pads by 1; widths are `ndf * min(2 ** n, 8)`.

Submodules are named `main_{i}` after the index `i` of the layer in taming's `nn.Sequential`
(`main.{i}.weight`), so a taming state dict maps by name (`ldm_jax.convert.taming`).

BatchNorm has PyTorch's `BatchNorm2d` semantics, running statistics included: with
`train=True` it normalises with the batch's (biased) variance and moves the running mean and
the *unbiased* running variance by 0.1 (Flax's `nn.BatchNorm` would move the biased one);
with `train=False` it uses the running statistics. They live in the `batch_stats` collection:

  logits, updates = model.apply({"params": p, "batch_stats": s}, x, train=True,
                                mutable=["batch_stats"])
  s = updates["batch_stats"]
  logits = model.apply({"params": p, "batch_stats": s}, x)  # eval: running statistics

Statistics are taken over the whole (global) batch given to the call; under `jit` with a
batch sharded over devices that is a synchronised BatchNorm.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


Dtype = Any
KERNEL, PADDING, SLOPE = 4, 1, 0.2


def _normal(mean: float, std: float):
  def init(key, shape, dtype=jnp.float32):
    return (mean + std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
  return init


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)
  return init


class BatchNorm(nn.Module):
  """`torch.nn.BatchNorm2d` over the last (channel) axis, statistics in float32.

  `momentum` follows Flax's convention: running = momentum * running + (1 - momentum) *
  batch, so 0.9 is PyTorch's momentum=0.1. Scale starts at N(1, 0.02) and bias at 0 (taming's
  `weights_init`). Running statistics are not moved while the module is being initialised.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    channels = x.shape[-1]
    scale = self.param("scale", _normal(1.0, 0.02), (channels,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (channels,), self.param_dtype)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
    x32 = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      count = math.prod(x.shape[:-1])
      if count < 2:
        raise ValueError(f"BatchNorm({self.name}) in training needs more than one value per "
                         f"channel, got input of shape {x.shape}.")
      mean = x32.mean(axis=axes)
      var = jnp.square(x32 - mean).mean(axis=axes)
      if not self.is_initializing():
        keep = self.momentum
        running_mean.value = keep * running_mean.value + (1 - keep) * mean
        unbiased = var * (count / (count - 1))
        running_var.value = keep * running_var.value + (1 - keep) * unbiased
    else:
      mean, var = running_mean.value, running_var.value
    normed = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    out = normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return out.astype(self.dtype)


class NLayerDiscriminator(nn.Module):
  """PatchGAN discriminator (taming's layout and initialisation), NHWC in, logits out.

  Attributes:
    ndf: width of the first conv; later ones are `ndf * min(2 ** n, 8)`.
    n_layers: number of stride-2 convs (the first one and n_layers - 1 BatchNorm blocks;
      one more, stride-1 BatchNorm block follows); `output_size` gives the logits' side.
    input_nc: expected input channels; None takes them from the input.
    dtype / param_dtype: compute / storage dtypes. Logits are returned in float32.

  Call: `model.apply(variables, x, train=False)`; see the module docstring for `train=True`.
  Convs start at N(0, 0.02) as in taming's `weights_init`; the first and last convs' biases
  keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which `weights_init` leaves alone.
  """
  ndf: int = 64
  n_layers: int = 3
  input_nc: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _conv(self, h, features: int, *, stride: int, use_bias: bool, name: str):
    fan_in = h.shape[-1] * KERNEL * KERNEL
    conv = nn.Conv(features, (KERNEL, KERNEL), strides=(stride, stride),
                   padding=[(PADDING, PADDING)] * 2, use_bias=use_bias, dtype=self.dtype,
                   param_dtype=self.param_dtype,
                   kernel_init=_normal(0.0, 0.02),
                   bias_init=_uniform(1 / math.sqrt(fan_in)),
                   name=name)
    return conv(h)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4:
      raise ValueError(f"NLayerDiscriminator expects NHWC images, got shape {x.shape}.")
    if self.input_nc is not None and x.shape[-1] != self.input_nc:
      raise ValueError(f"NLayerDiscriminator(input_nc={self.input_nc}) got {x.shape[-1]} "
                       f"channels (input shape {x.shape}).")
    if self.n_layers < 0:
      raise ValueError(f"NLayerDiscriminator: n_layers={self.n_layers} must be >= 0.")
    output_size(min(x.shape[1:3]), self.n_layers)  # Raises if the input is too small.
    norm = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = self._conv(x.astype(self.dtype), self.ndf, stride=2, use_bias=True, name="main_0")
    h = nn.leaky_relu(h, SLOPE)
    index = 2  # taming's Sequential index of the next conv (the LeakyReLU took index 1).
    # n_layers - 1 stride-2 blocks, then one stride-1 block of width ndf * min(2**n_layers, 8).
    blocks = [(min(2**n, 8), 2) for n in range(1, self.n_layers)]
    for mult, stride in blocks + [(min(2**self.n_layers, 8), 1)]:
      h = self._conv(h, self.ndf * mult, stride=stride, use_bias=False, name=f"main_{index}")
      h = BatchNorm(name=f"main_{index + 1}", **norm)(h, train=train)
      h = nn.leaky_relu(h, SLOPE)
      index += 3
    logits = self._conv(h, 1, stride=1, use_bias=True, name=f"main_{index}")
    return logits.astype(jnp.float32)


def output_size(size: int, n_layers: int) -> int:
  """Side of the logits map for an input of side `size` (raises if nothing would be left)."""
  out = size
  for _ in range(max(n_layers, 1)):  # The first conv and n_layers - 1 blocks: stride 2.
    out = (out + 2 * PADDING - KERNEL) // 2 + 1
  out = out - 2  # Two stride-1 4x4 convs with padding 1 each remove one pixel.
  if out < 1:
    raise ValueError(f"An input of side {size} leaves no logits in a {n_layers}-layer "
                     f"PatchGAN (side {out}).")
  return out
