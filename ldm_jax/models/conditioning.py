"""Conditioners (the LDM paper's tau_theta) that turn a condition into UNet inputs.

* `ClassEmbedder`: labels -> a one-token context (B, 1, embed_dim); index `num_classes` is a
  reserved null class for classifier-free guidance.
* `TextEncoder`: token ids -> (B, L, width), a pre-LayerNorm transformer trained jointly with
  the UNet, as in LDM's text-to-image model (learned absolute positions, GELU MLP).
* `SpatialRescaler`: resizes a spatial condition (semantic map, low-res image) `n_stages`
  times by `multiplier`, optionally remapping channels with a 1x1 conv, for concatenation.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.nn import attention
from ldm_jax.nn import layers

Dtype = Any


class ClassEmbedder(nn.Module):
  num_classes: int
  embed_dim: int
  add_null_class: bool = True
  param_dtype: Dtype = jnp.float32

  @property
  def null_label(self) -> int:
    if not self.add_null_class:
      raise ValueError("ClassEmbedder has no null class (add_null_class=False).")
    return self.num_classes

  @nn.compact
  def __call__(self, labels):
    rows = self.num_classes + int(self.add_null_class)
    table = nn.initializers.normal(1.0)
    embed = nn.Embed(rows, self.embed_dim, embedding_init=table, param_dtype=self.param_dtype,
                     name="embedding")
    return embed(jnp.asarray(labels, jnp.int32))[:, None, :]


class TextEncoder(nn.Module):
  """Token ids [B, L] -> context [B, L, width]."""
  vocab_size: int
  max_length: int = 77
  width: int = 512
  depth: int = 8
  heads: int = 8
  head_dim: int | None = None  # None: width // heads. LDM's BERT-style tau_theta uses 64.
  mlp_ratio: int = 4
  dropout: float = 0.0
  deterministic: bool = True
  attention_impl: str | None = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if tokens.shape[-1] > self.max_length:
      raise ValueError(f"TextEncoder: {tokens.shape[-1]} tokens, max_length="
                       f"{self.max_length}.")
    table = nn.initializers.normal(0.02)
    h = nn.Embed(self.vocab_size, self.width, embedding_init=table, name="token_emb",
                 **kw)(tokens)
    positions = self.param("pos_emb", table, (self.max_length, self.width), self.param_dtype)
    h = h + positions[:tokens.shape[-1]].astype(self.dtype)
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name, **kw)
    for i in range(self.depth):
      h = h + attention.CrossAttention(self.heads, self.head_dim or self.width // self.heads,
                                       attention_impl=self.attention_impl,
                                       name=f"layers_{i}/attn", **kw)(
                                           norm(f"layers_{i}/norm_attn")(h))
      m = layers.dense(self.width * self.mlp_ratio, name=f"layers_{i}/mlp_in", **kw)(
          norm(f"layers_{i}/norm_mlp")(h))
      m = nn.Dropout(self.dropout, deterministic=self.deterministic)(jax.nn.gelu(m, False))
      h = h + layers.dense(self.width, name=f"layers_{i}/mlp_out", **kw)(m)
    return norm("norm")(h)


class SpatialRescaler(nn.Module):
  n_stages: int = 1
  method: str = "bilinear"
  multiplier: float = 0.5
  out_channels: int | None = None
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for _ in range(self.n_stages):
      height, width = int(x.shape[1] * self.multiplier), int(x.shape[2] * self.multiplier)
      # No antialiasing: the same sampling as PyTorch's F.interpolate (align_corners=False).
      x = jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), self.method,
                           antialias=False)
    if self.out_channels is not None:
      x = nn.Conv(self.out_channels, (1, 1), use_bias=self.use_bias, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="channel_mapper")(x)
    return x
