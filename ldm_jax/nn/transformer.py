"""A pre-LayerNorm transformer block and a scanned stack of them (the U-ViT's middle).

`Block(x, emb=None, context=None)`: x [B, L, D] tokens. Without `emb` and `context` it is the
standard pre-norm encoder layer (torch.nn.TransformerEncoderLayer(norm_first=True,
activation='gelu'): LayerNorm - multi-head self-attention (nn/attention.py's, with biased
projections) - residual, LayerNorm - Linear - GELU - Linear - residual), checked against it
with copied weights. `emb` [B, E] (time and class embedding) modulates both LayerNorms, norm(x) *
(1 + scale) + shift, with scale and shift from a zero-initialised projection of SiLU(emb)
(DiT's adaptive LayerNorm, without its gates), so a new block starts as the plain one.
`context` [B, N, C] adds a cross-attention sub-block after the self-attention.

`Stack` runs `depth` blocks under `nn.scan` (one traced block: compile time does not grow
with depth; parameters get a leading [depth] axis), with `nn.remat` per block when asked.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.nn import attention
from ldm_jax.nn import layers
from ldm_jax.nn import remat as remat_lib

Dtype = Any


class Block(nn.Module):
  heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  epsilon: float = 1e-5
  deterministic: bool = True
  attention_impl: str | None = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb=None, context=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = x.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=self.epsilon, use_fast_variance=False,
                                     name=name, **kw)
    if emb is not None:
      mod = layers.dense(4 * width, zero_init=True, name="modulation", **kw)(
          jax.nn.silu(emb.astype(self.dtype)))[:, None, :]
      scale1, shift1, scale2, shift2 = jnp.split(mod, 4, axis=-1)
      modulate = lambda h, scale, shift: h * (1 + scale) + shift
    else:
      modulate = lambda h, scale, shift: h
      scale1 = shift1 = scale2 = shift2 = None
    if width % self.heads:
      raise ValueError(f"transformer block: width {width} does not split into {self.heads} "
                       f"heads.")
    dropout = nn.Dropout(self.dropout, deterministic=self.deterministic)
    attn = dict(heads=self.heads, head_dim=width // self.heads, use_bias=True,
                attention_impl=self.attention_impl, **kw)
    h = modulate(norm("norm1")(x), scale1, shift1)
    x = x + dropout(attention.CrossAttention(**attn, name="self_attention")(h))
    if context is not None:
      x = x + dropout(attention.CrossAttention(**attn, name="cross_attention")(
          norm("norm_context")(x), context))
    h = modulate(norm("norm2")(x), scale2, shift2)
    h = jax.nn.gelu(layers.dense(self.mlp_ratio * width, name="mlp_in", **kw)(h),
                    approximate=False)
    h = layers.dense(width, name="mlp_out", **kw)(dropout(h))
    return x + dropout(h)


class _ScanBlock(Block):
  """A Block with the (carry, output) signature `nn.scan` needs."""

  def __call__(self, x, emb=None, context=None):
    return super().__call__(x, emb, context), None


class Stack(nn.Module):
  """`depth` Blocks under nn.scan; parameters under 'blocks' with a leading [depth] axis."""
  depth: int
  heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  remat: bool | str = False  # See nn/remat.py.
  deterministic: bool = True
  attention_impl: str | None = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb=None, context=None):
    if self.depth < 1:
      raise ValueError(f"transformer depth={self.depth}: expected >= 1.")
    block = remat_lib.wrap(_ScanBlock, self.remat, prevent_cse=False)
    scanned = nn.scan(block, variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast, nn.broadcast), length=self.depth)
    x, _ = scanned(self.heads, mlp_ratio=self.mlp_ratio, dropout=self.dropout,
                   deterministic=self.deterministic, attention_impl=self.attention_impl,
                   dtype=self.dtype, param_dtype=self.param_dtype, name="blocks")(
                       x, emb, context)
    return x
