"""Convolutions, float32 GroupNorm, ResBlock, up/downsampling and timestep embeddings.

Submodule names follow diffusers' module names (`conv1`, `time_emb_proj`, `conv_shortcut`,
...) so that PyTorch checkpoints map onto our parameter trees by name. `dtype` is the compute
dtype, `param_dtype` the storage dtype of parameters. Parameters carry no sharding names:
ldm_jax/parallel/sharding.py shards every array by its shape (the same rule for parameters,
optimiser moments and EMA copies).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.nn import group_norm as group_norm_lib

Dtype = Any

# PyTorch's default initialisation of Conv2d / Linear weights (kaiming_uniform, a=sqrt(5)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _init(zero: bool = False):
  return nn.initializers.zeros_init() if zero else torch_default_init


def conv(features: int, *, kernel: int = 3, stride: int = 1, padding: Any = None,
         zero_init: bool = False, dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
  """A 2D convolution (NHWC); default padding keeps the size ('same' for odd kernels)."""
  if padding is None:
    padding = [(kernel // 2, kernel // 2)] * 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 dtype=dtype, param_dtype=param_dtype, kernel_init=_init(zero_init),
                 bias_init=nn.initializers.zeros_init(), name=name)


def dense(features: int, *, use_bias: bool = True, zero_init: bool = False,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
          name: str | None = None) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=_init(zero_init), bias_init=nn.initializers.zeros_init(),
                  name=name)


class GroupNorm(nn.Module):
  """GroupNorm computed in float32 whatever the compute dtype (as PyTorch's, biased var)."""
  groups: int = 32
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    if channels % self.groups:
      raise ValueError(f"GroupNorm: {channels} channels are not divisible into "
                       f"{self.groups} groups.")
    scale = self.param("scale", nn.initializers.ones_init(), (channels,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (channels,), self.param_dtype)
    out = group_norm_lib.group_norm(x.astype(jnp.float32), scale.astype(jnp.float32),
                                    bias.astype(jnp.float32), self.groups, self.epsilon)
    return out.astype(self.dtype)


class ResBlock(nn.Module):
  """norm-SiLU-conv, (+ timestep embedding), norm-SiLU-dropout-conv, plus a skip path.

  `scale_shift=True` applies the embedding as norm2(h) * (1 + scale) + shift (openai's
  use_scale_shift_norm); otherwise it is added after conv1. `temb=None`: no embedding (the
  autoencoder's blocks).
  """
  out_channels: int
  groups: int = 32
  epsilon: float = 1e-5
  dropout: float = 0.0
  scale_shift: bool = False
  zero_init_out: bool = False
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = dict(groups=self.groups, epsilon=self.epsilon, **kw)
    h = jax.nn.silu(GroupNorm(**norm, name="norm1")(x))
    h = conv(self.out_channels, name="conv1", **kw)(h)
    scale = shift = None
    if temb is not None:
      width = 2 * self.out_channels if self.scale_shift else self.out_channels
      emb = dense(width, name="time_emb_proj", **kw)(jax.nn.silu(temb))[:, None, None, :]
      if self.scale_shift:
        scale, shift = jnp.split(emb, 2, axis=-1)
      else:
        h = h + emb
    h = GroupNorm(**norm, name="norm2")(h)
    if scale is not None:
      h = h * (1 + scale) + shift
    h = jax.nn.silu(h)
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
    h = conv(self.out_channels, zero_init=self.zero_init_out, name="conv2", **kw)(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, kernel=1, name="conv_shortcut", **kw)(x)
    return x + h


class Downsample(nn.Module):
  """Stride-2 3x3 conv. `asymmetric_pad`: pad right/bottom only (the autoencoders')."""
  channels: int
  asymmetric_pad: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    padding = [(0, 1), (0, 1)] if self.asymmetric_pad else [(1, 1), (1, 1)]
    return conv(self.channels, stride=2, padding=padding, dtype=self.dtype,
                param_dtype=self.param_dtype, name="conv")(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling, then a 3x3 conv."""
  channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv(self.channels, dtype=self.dtype, param_dtype=self.param_dtype,
                name="conv")(x)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps, float32.

  frequencies = max_period ** (-i / (dim // 2)), i = 0 .. dim//2 - 1 (openai / CompVis and
  diffusers' flip_sin_to_cos=True, downscale_freq_shift=0). An odd `dim` gets a zero column.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32).reshape(-1)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def logsnr_time(logsnr: jax.Array, scale: float = 1000.0) -> jax.Array:
  """The time input of a network conditioned on logSNR: arctan(exp(-logSNR / 2)) / (pi / 2),
  the t of the plain cosine schedule with that logSNR, times `scale` (the range of
  `timestep_embedding`'s usual inputs); logSNR clipped to [-20, 20]. (Salimans & Ho's
  diffusion_distillation UNet embeds logSNR this way.)"""
  logsnr = jnp.clip(jnp.asarray(logsnr, jnp.float32), -20.0, 20.0)
  return jnp.arctan(jnp.exp(-0.5 * logsnr)) / (0.5 * math.pi) * scale


class TimestepMLP(nn.Module):
  """linear_1 - SiLU - linear_2 on the sinusoidal embedding (diffusers' TimestepEmbedding)."""
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, emb):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = dense(self.features, name="linear_1", **kw)(emb)
    return dense(self.features, name="linear_2", **kw)(jax.nn.silu(h))
