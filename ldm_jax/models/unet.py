"""The latent-diffusion UNet (openai / CompVis hyper-parameters).

`UNet(...)(x_t, t, context=None, y=None)`: `t` is whatever time the diffusion code feeds it
(integer steps or continuous values: the network only embeds it), `context` the
cross-attention sequence (B, L, context_dim), `y` integer class labels for the label
embedding. Concatenation conditioning is extra input channels: `in_channels` counts them.

Attention blocks sit after each ResBlock of the levels whose downsampling factor is in
`attention_resolutions` (1, 2, 4, ...), and in the middle block. They are SpatialTransformers
(self + cross attention, GEGLU) when `use_spatial_transformer`, else plain self-attention
blocks (the unconditional/class-conditional openai UNet, diffusers' UNet2DModel). Heads:
`num_head_channels` channels each when set (> 0), else `num_heads` heads.

simple diffusion's U-Net is this network with `logsnr_input=True` (the time input is the
logSNR, embedded as `layers.logsnr_time(logSNR)`) and `dropout_resolutions`: the
downsampling factors (as `attention_resolutions`) whose ResBlocks and transformers get
`dropout`, the middle block counting as the deepest level; None: every level.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.nn import attention
from ldm_jax.nn import layers
from ldm_jax.nn import remat as remat_lib

Dtype = Any


class UNet(nn.Module):
  in_channels: int = 4
  out_channels: int = 4
  model_channels: int = 320
  channel_mult: Sequence[int] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (4, 2, 1)
  num_heads: int = 8
  num_head_channels: int = -1
  use_spatial_transformer: bool = True
  transformer_depth: int = 1
  context_dim: int | None = 768
  linear_projection: bool = False
  num_classes: int | None = None
  scale_shift: bool = False
  dropout: float = 0.0
  dropout_resolutions: Sequence[int] | None = None
  logsnr_input: bool = False
  groups: int = 32
  deterministic: bool = True
  remat: bool | str = False  # See nn/remat.py.
  attention_impl: str | None = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def heads_for(self, channels: int) -> tuple[int, int]:
    """(heads, head_dim) of an attention block on `channels` channels."""
    if self.num_head_channels > 0:
      if channels % self.num_head_channels:
        raise ValueError(f"UNet: {channels} channels are not a multiple of "
                         f"num_head_channels={self.num_head_channels}.")
      return channels // self.num_head_channels, self.num_head_channels
    if channels % self.num_heads:
      raise ValueError(f"UNet: {channels} channels do not split into "
                       f"num_heads={self.num_heads} heads.")
    return self.num_heads, channels // self.num_heads

  def _dropout(self, level: int) -> float:
    if self.dropout_resolutions is None or 2**level in self.dropout_resolutions:
      return self.dropout
    return 0.0

  def _res(self, channels, name, level):
    block = remat_lib.wrap(layers.ResBlock, self.remat)
    return block(channels, groups=self.groups, epsilon=1e-5, dropout=self._dropout(level),
                 scale_shift=self.scale_shift, zero_init_out=True,
                 deterministic=self.deterministic, dtype=self.dtype,
                 param_dtype=self.param_dtype, name=name)

  def _attn(self, h, context, name, level):
    heads, head_dim = self.heads_for(h.shape[-1])
    kw = dict(zero_init_out=True, attention_impl=self.attention_impl, dtype=self.dtype,
              param_dtype=self.param_dtype, name=name)
    if self.use_spatial_transformer:
      block = remat_lib.wrap(attention.SpatialTransformer, self.remat)
      return block(heads, head_dim, depth=self.transformer_depth,
                   linear_projection=self.linear_projection, groups=self.groups,
                   dropout=self._dropout(level), deterministic=self.deterministic,
                   **kw)(h, context)
    block = remat_lib.wrap(attention.SpatialSelfAttention, self.remat)
    return block(heads=heads, groups=self.groups, epsilon=1e-5, **kw)(h)

  @nn.compact
  def __call__(self, x, t, context=None, y=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if x.shape[-1] != self.in_channels:
      raise ValueError(f"UNet input has {x.shape[-1]} channels; in_channels="
                       f"{self.in_channels} (latents plus any concatenated conditioning).")
    if (y is None) != (self.num_classes is None):
      raise ValueError(f"UNet: class labels y are {'missing' if y is None else 'given'} but "
                       f"num_classes={self.num_classes}.")
    if context is not None and self.context_dim is None:
      raise ValueError("UNet: a context was given but context_dim is None.")
    t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
    if self.logsnr_input:
      t = layers.logsnr_time(t)
    emb = layers.timestep_embedding(t, self.model_channels).astype(self.dtype)
    emb = layers.TimestepMLP(4 * self.model_channels, name="time_embedding", **kw)(emb)
    if self.num_classes is not None:
      table = nn.initializers.normal(1.0)
      emb = emb + nn.Embed(self.num_classes, 4 * self.model_channels, embedding_init=table,
                           name="class_embedding", **kw)(y)

    h = layers.conv(self.model_channels, name="conv_in", **kw)(x.astype(self.dtype))
    skips = [h]
    levels = len(self.channel_mult)
    for level, mult in enumerate(self.channel_mult):
      attend = 2**level in self.attention_resolutions
      for i in range(self.num_res_blocks):
        h = self._res(self.model_channels * mult, f"down_blocks_{level}/resnets_{i}",
                      level)(h, emb)
        if attend:
          h = self._attn(h, context, f"down_blocks_{level}/attentions_{i}", level)
        skips.append(h)
      if level != levels - 1:
        h = layers.Downsample(h.shape[-1], name=f"down_blocks_{level}/downsamplers_0",
                              **kw)(h)
        skips.append(h)

    deepest = levels - 1
    h = self._res(h.shape[-1], "mid_block/resnets_0", deepest)(h, emb)
    h = self._attn(h, context, "mid_block/attentions_0", deepest)
    h = self._res(h.shape[-1], "mid_block/resnets_1", deepest)(h, emb)

    for up, mult in enumerate(reversed(self.channel_mult)):
      level = levels - 1 - up
      attend = 2**level in self.attention_resolutions
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = self._res(self.model_channels * mult, f"up_blocks_{up}/resnets_{i}",
                      level)(h, emb)
        if attend:
          h = self._attn(h, context, f"up_blocks_{up}/attentions_{i}", level)
      if level != 0:
        h = layers.Upsample(h.shape[-1], name=f"up_blocks_{up}/upsamplers_0", **kw)(h)

    h = layers.GroupNorm(self.groups, 1e-5, name="conv_norm_out", **kw)(h)
    return layers.conv(self.out_channels, zero_init=True, name="conv_out", **kw)(
        jax.nn.silu(h))
