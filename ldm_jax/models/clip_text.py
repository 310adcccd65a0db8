"""CLIP's text transformer: the frozen text encoder of Stable Diffusion 1.x and 2.x.

token ids [B, L] -> token embedding + learned absolute position -> `depth` pre-LayerNorm
blocks (causal multi-head self-attention with biased q/k/v/out projections; MLP width ->
mlp_width -> width with `activation`) -> final LayerNorm -> [B, L, width].

* SD 1.x: OpenAI's ViT-L/14 text tower (quick_gelu, 12 x 768, 12 heads); the context is the
  last block's output after the final LayerNorm (transformers' `last_hidden_state`).
* SD 2.x: OpenCLIP's ViT-H/14 text tower (exact GELU, 24 x 1024, 16 heads); the context is
  the penultimate block's output through the final LayerNorm (`output_layer=-2`): the last
  block is never built, so its weights are neither held nor computed.

Submodules carry transformers' CLIPTextModel names (`embeddings/token_embedding`,
`encoder/layers_3/layer_norm1`, `final_layer_norm`, ...), except the attention, which is
nn/attention's CrossAttention (`self_attn/to_q`, ..., `to_out_0`); checkpoints are renamed to
these on import (ldm_jax/convert/text_encoders.py), OpenCLIP's layout included. Positions are always 0..L-1 (checkpoints' stored
`position_ids` buffers are ignored: some merged files carry corrupt ones).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.nn import attention
from ldm_jax.nn import layers

Dtype = Any
ACTIVATIONS = {"quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
               "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


class _Block(nn.Module):
  heads: int
  mlp_width: int
  activation: str
  causal: bool
  attention_impl: str | None
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name, **kw)
    x = x + attention.CrossAttention(
        self.heads, x.shape[-1] // self.heads, use_bias=True, causal=self.causal,
        attention_impl=self.attention_impl, name="self_attn", **kw)(norm("layer_norm1")(x))
    return x + _MLP(self.mlp_width, self.activation, name="mlp", **kw)(norm("layer_norm2")(x))


class _MLP(nn.Module):
  width: int
  activation: str
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = ACTIVATIONS[self.activation](layers.dense(self.width, name="fc1", **kw)(x))
    return layers.dense(x.shape[-1], name="fc2", **kw)(h)


class _Encoder(nn.Module):
  depth: int
  block: dict

  @nn.compact
  def __call__(self, h):
    for i in range(self.depth):
      h = _Block(**self.block, name=f"layers_{i}")(h)
    return h


class _Embeddings(nn.Module):
  vocab_size: int
  max_length: int
  width: int
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, tokens):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                 name="token_embedding", **kw)(tokens)
    positions = nn.Embed(self.max_length, self.width,
                         embedding_init=nn.initializers.normal(0.01),
                         name="position_embedding", **kw)(jnp.arange(tokens.shape[-1]))
    return h + positions[None]


class CLIPTextEncoder(nn.Module):
  """Token ids [B, L] (L <= max_length) -> context [B, L, width]; see the module docstring."""
  vocab_size: int = 49408
  max_length: int = 77
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_width: int = 3072
  activation: str = "quick_gelu"
  output_layer: int = -1  # -1: the last block's output; -2: the penultimate's (SD 2.x).
  final_norm: bool = True  # The final LayerNorm on the chosen layer (as SD 1.x and 2.x).
  causal: bool = True
  attention_impl: str | None = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def built_depth(self) -> int:
    """Blocks that run (and hold weights): those up to `output_layer`."""
    return self.depth + 1 + self.output_layer

  def check(self) -> None:
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"conditioner.activation={self.activation!r}: expected one of "
                       f"{sorted(ACTIVATIONS)}.")
    if not -self.depth <= self.output_layer <= -1:
      raise ValueError(f"conditioner.output_layer={self.output_layer}: expected -1 (the last "
                       f"block) .. -{self.depth} (depth={self.depth}).")
    if self.width % self.heads:
      raise ValueError(f"conditioner.width={self.width} does not split into "
                       f"heads={self.heads}.")

  @nn.compact
  def __call__(self, tokens):
    self.check()
    if tokens.ndim != 2 or tokens.shape[-1] > self.max_length:
      raise ValueError(f"CLIPTextEncoder: tokens of shape {tokens.shape}; expected [batch, "
                       f"length <= {self.max_length}].")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = _Embeddings(self.vocab_size, self.max_length, self.width, name="embeddings",
                    **kw)(jnp.asarray(tokens, jnp.int32))
    blocks = dict(heads=self.heads, mlp_width=self.mlp_width, activation=self.activation,
                  causal=self.causal, attention_impl=self.attention_impl, **kw)
    h = _Encoder(self.built_depth, blocks, name="encoder")(h)
    if self.final_norm:
      h = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="final_layer_norm",
                       **kw)(h)
    return h
