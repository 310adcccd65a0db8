"""Self- and cross-attention and the SpatialTransformer, on `jax.nn.dot_product_attention`.

`attention_impl` picks the kernel: 'xla' (any backend), 'cudnn' (flash attention on NVIDIA
GPUs, bf16/fp16 only) or 'auto' (cuDNN where it applies: a GPU backend, bf16/fp16 operands
and a head size cuDNN's flash kernel takes; XLA otherwise). Either way q k^T is accumulated
and soft-maxed in float32 whatever the compute dtype: what Stable Diffusion 2.1's
`upcast_attention` asks of fp16 inference (tests/nn/attention_test.py). Submodule names follow
diffusers (`to_q`, `to_out_0`, `transformer_blocks_0`, `ff/net_0/proj`, ...) for weight
import.
"""

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.nn import layers

Dtype = Any
IMPLEMENTATIONS = ("xla", "cudnn", "auto")
# cuDNN's fused flash attention: half-precision operands, head sizes up to 128 in steps of 8.
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128


def resolve(implementation: str | None, q, k) -> str | None:
  """The kernel `implementation` means for these operands: 'auto' -> 'cudnn' where cuDNN's
  flash kernel applies (a GPU backend, bf16/fp16, head size a multiple of 8 up to 128, q and k
  of one dtype), else 'xla'; any other value is returned as it is (checked)."""
  if implementation not in (None, *IMPLEMENTATIONS):
    raise ValueError(f"attention_impl={implementation!r}: expected one of "
                     f"{IMPLEMENTATIONS} (or None to let JAX choose).")
  if implementation != "auto":
    return implementation
  head_dim = q.shape[-1]
  fits = (jax.default_backend() == "gpu" and q.dtype in CUDNN_DTYPES and k.dtype == q.dtype
          and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM)
  return "cudnn" if fits else "xla"


def dot_product_attention(q, k, v, implementation: str | None = "xla", *,
                          is_causal: bool = False):
  """Softmax(q k^T / sqrt(d)) v for (batch, length, heads, head_dim) arrays; `is_causal`:
  position i attends to positions <= i only (CLIP's text transformer)."""
  return jax.nn.dot_product_attention(q, k, v, implementation=resolve(implementation, q, k),
                                      is_causal=is_causal)


class SpatialSelfAttention(nn.Module):
  """GroupNorm, multi-head self-attention over all positions, output projection, residual.

  The attention block of the autoencoders (one head) and of openai/UNet2DModel UNets.
  """
  heads: int = 1
  groups: int = 32
  epsilon: float = 1e-6
  zero_init_out: bool = False
  attention_impl: str | None = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, height, width, channels = x.shape
    if channels % self.heads:
      raise ValueError(f"SpatialSelfAttention: {channels} channels do not split into "
                       f"{self.heads} heads.")
    h = layers.GroupNorm(self.groups, self.epsilon, name="group_norm", **kw)(x)
    h = h.reshape(batch, height * width, channels)
    split = lambda t: einops.rearrange(t, "b l (n d) -> b l n d", n=self.heads)
    q, k, v = (split(layers.dense(channels, name=n, **kw)(h))
               for n in ("to_q", "to_k", "to_v"))
    out = dot_product_attention(q, k, v, self.attention_impl)
    out = einops.rearrange(out, "b l n d -> b l (n d)")
    out = layers.dense(channels, zero_init=self.zero_init_out, name="to_out_0", **kw)(out)
    return x + out.reshape(x.shape)


class CrossAttention(nn.Module):
  """Multi-head attention of `x` over `context` (itself when context is None); `use_bias`
  gives the q/k/v projections biases (as torch.nn.MultiheadAttention's); `causal`: position
  i attends to positions <= i only (CLIP's text transformer)."""
  heads: int
  head_dim: int
  zero_init_out: bool = False
  use_bias: bool = False
  causal: bool = False
  attention_impl: str | None = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    context = x if context is None else context.astype(self.dtype)
    inner = self.heads * self.head_dim
    split = lambda t: einops.rearrange(t, "b l (n d) -> b l n d", n=self.heads)
    q = split(layers.dense(inner, use_bias=self.use_bias, name="to_q", **kw)(x))
    k = split(layers.dense(inner, use_bias=self.use_bias, name="to_k", **kw)(context))
    v = split(layers.dense(inner, use_bias=self.use_bias, name="to_v", **kw)(context))
    out = einops.rearrange(dot_product_attention(q, k, v, self.attention_impl,
                                                 is_causal=self.causal),
                           "b l n d -> b l (n d)")
    return layers.dense(x.shape[-1], zero_init=self.zero_init_out, name="to_out_0", **kw)(out)


class GEGLU(nn.Module):
  """proj to 2*inner, then value * GELU(gate) (exact GELU, as PyTorch's default)."""
  inner: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = layers.dense(2 * self.inner, name="proj", dtype=self.dtype,
                     param_dtype=self.param_dtype)(x)
    value, gate = jnp.split(h, 2, axis=-1)
    return value * jax.nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  mult: int = 4
  dropout: float = 0.0
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = GEGLU(x.shape[-1] * self.mult, name="net_0", **kw)(x)
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
    return layers.dense(x.shape[-1], name="net_2", **kw)(h)


class TransformerBlock(nn.Module):
  """Pre-LayerNorm self-attention, cross-attention and GEGLU feed-forward, each residual."""
  heads: int
  head_dim: int
  dropout: float = 0.0
  deterministic: bool = True
  attention_impl: str | None = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = dict(heads=self.heads, head_dim=self.head_dim, attention_impl=self.attention_impl,
                **kw)
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name, **kw)
    x = x + CrossAttention(**attn, name="attn1")(norm("norm1")(x))
    x = x + CrossAttention(**attn, name="attn2")(norm("norm2")(x), context)
    return x + FeedForward(dropout=self.dropout, deterministic=self.deterministic,
                           name="ff", **kw)(norm("norm3")(x))


class SpatialTransformer(nn.Module):
  """GroupNorm, projection in (1x1 conv, or linear as in SD 2.x), N transformer blocks,
  projection out, residual. Without `context`, the cross-attention attends to x itself."""
  heads: int
  head_dim: int
  depth: int = 1
  linear_projection: bool = False
  groups: int = 32
  dropout: float = 0.0
  deterministic: bool = True
  zero_init_out: bool = False
  attention_impl: str | None = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, height, width, channels = x.shape
    inner = self.heads * self.head_dim
    h = layers.GroupNorm(self.groups, 1e-6, name="norm", **kw)(x)
    if self.linear_projection:
      proj_in = layers.dense(inner, name="proj_in", **kw)
      proj_out = layers.dense(channels, zero_init=self.zero_init_out, name="proj_out", **kw)
    else:
      proj_in = layers.conv(inner, kernel=1, name="proj_in", **kw)
      proj_out = layers.conv(channels, kernel=1, zero_init=self.zero_init_out,
                             name="proj_out", **kw)
    h = proj_in(h).reshape(batch, height * width, inner)
    for i in range(self.depth):
      h = TransformerBlock(self.heads, self.head_dim, dropout=self.dropout,
                           deterministic=self.deterministic,
                           attention_impl=self.attention_impl,
                           name=f"transformer_blocks_{i}", **kw)(h, context)
    h = proj_out(h.reshape(batch, height, width, inner))
    return x + h
