"""simple diffusion's U-ViT (Hoogeboom, Heek & Salimans 2023, Sec. 3.5 and Fig. 7).

`UViT(...)(x, time, context=None, y=None)`, the interface of every denoiser network
(models/networks.py):

  stem        'patch': a d x d stride-d convolution (d = patch_size; a 3x3 one for d = 1);
              'wavelet': log2(d) levels of the CDF 5/3 wavelet on every sub-band
              (nn/wavelet.py), then a 3x3 convolution. Both downsample by d at once.
  conv levels one per entry of `channels`: `num_res_blocks` ResBlocks (followed by
              self-attention at `attention_levels`), each output kept as a skip; then 2x2
              average pooling.
  middle      at the lowest resolution, the feature map becomes tokens (a linear map to
              `transformer_width` plus fixed 2-D sine-cosine positions) through
              `transformer_depth` pre-norm transformer blocks (nn/transformer.py: self-
              attention, cross-attention on `context` when given, MLP), scanned, each
              modulated by the time (+ class) embedding; back by LayerNorm and a linear map.
              No skips around it.
  up levels   nearest-neighbour 2x upsampling, then `num_res_blocks` ResBlocks, each on the
              concatenation with its skip.
  head        GroupNorm, SiLU, then the stem's inverse: a d x d stride-d transposed
              convolution (a 3x3 convolution for d = 1), or a 3x3 convolution to the wavelet
              coefficients and the inverse transform. Zero-initialised.

Time: `logsnr_input=True` (simple diffusion) takes the logSNR and embeds
`layers.logsnr_time(logSNR)`; otherwise the time input is embedded as it comes. Labels `y`
(num_classes rows: reserve one for the null class of classifier-free guidance) add a learned
embedding. Dropout: `dropout` in the transformer blocks (the low-resolution middle, where the
paper puts it), `res_dropout` in the ResBlocks.
"""

from typing import Any, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.nn import attention
from ldm_jax.nn import layers
from ldm_jax.nn import remat as remat_lib
from ldm_jax.nn import transformer
from ldm_jax.nn import wavelet

Dtype = Any
STEMS = ("patch", "wavelet")


def sincos_positions(side: int, width: int) -> np.ndarray:
  """Fixed 2-D sine-cosine position embeddings [side * side, width] (row-major tokens): half
  the channels encode the row, half the column (width must be a multiple of 4)."""
  if width % 4:
    raise ValueError(f"UViT: transformer_width={width} must be a multiple of 4.")
  quarter = width // 4
  freqs = 1.0 / 10_000 ** (np.arange(quarter, dtype=np.float64) / quarter)
  pos = np.arange(side, dtype=np.float64)[:, None] * freqs[None]
  axis = np.concatenate([np.sin(pos), np.cos(pos)], axis=1)  # [side, width / 2]
  rows = np.repeat(axis, side, axis=0)
  cols = np.tile(axis, (side, 1))
  return np.concatenate([rows, cols], axis=1).astype(np.float32)


class UViT(nn.Module):
  in_channels: int = 3
  out_channels: int = 3
  stem: str = "patch"
  patch_size: int = 1
  channels: Sequence[int] = (256, 512)
  num_res_blocks: int = 3
  attention_levels: Sequence[int] = ()
  transformer_width: int = 1024
  transformer_depth: int = 16
  head_dim: int = 64
  mlp_ratio: int = 4
  embedding_width: int | None = None  # None: 4 x the first level's channels.
  dropout: float = 0.0
  res_dropout: float = 0.0
  num_classes: int | None = None
  context_dim: int | None = None
  logsnr_input: bool = True
  groups: int = 32
  deterministic: bool = True
  remat: bool | str = False  # See nn/remat.py.
  attention_impl: str | None = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def size_multiple(self) -> int:
    return self.patch_size * 2 ** len(self.channels)

  def _check(self, x, y, context):
    if self.stem not in STEMS:
      raise ValueError(f"UViT: stem={self.stem!r}: expected one of {STEMS}.")
    d = self.patch_size
    if d < 1 or (self.stem == "wavelet" and d & (d - 1)):
      raise ValueError(f"UViT: patch_size={d}: expected >= 1 (a power of two for the "
                       f"wavelet stem).")
    bad = [lvl for lvl in self.attention_levels if not 0 <= lvl < len(self.channels)]
    if bad:
      raise ValueError(f"UViT: attention_levels {bad} are not levels of channels="
                       f"{tuple(self.channels)}.")
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"UViT: input shape {x.shape}: expected NHWC with in_channels="
                       f"{self.in_channels} channels.")
    if x.shape[1] % self.size_multiple or x.shape[2] % self.size_multiple:
      raise ValueError(f"UViT: input sides {x.shape[1:3]} must be multiples of "
                       f"{self.size_multiple} (patch_size x 2^levels).")
    if (y is None) != (self.num_classes is None):
      raise ValueError(f"UViT: class labels y are {'missing' if y is None else 'given'} but "
                       f"num_classes={self.num_classes}.")
    if context is not None and self.context_dim is None:
      raise ValueError("UViT: a context was given but context_dim is None.")

  def _res(self, h, emb, channels, name):
    block = remat_lib.wrap(layers.ResBlock, self.remat)
    return block(channels, groups=self.groups, epsilon=1e-5, dropout=self.res_dropout,
                 scale_shift=True, zero_init_out=True, deterministic=self.deterministic,
                 dtype=self.dtype, param_dtype=self.param_dtype, name=name)(h, emb)

  def _attn(self, h, name):
    channels = h.shape[-1]
    if channels % self.head_dim:
      raise ValueError(f"UViT: {channels} channels are not a multiple of head_dim="
                       f"{self.head_dim}.")
    block = remat_lib.wrap(attention.SpatialSelfAttention, self.remat)
    return block(heads=channels // self.head_dim, groups=self.groups, epsilon=1e-5,
                 zero_init_out=True, attention_impl=self.attention_impl, dtype=self.dtype,
                 param_dtype=self.param_dtype, name=name)(h)

  @nn.compact
  def __call__(self, x, time, context=None, y=None):
    self._check(x, y, context)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = self.patch_size
    first = self.channels[0] if self.channels else self.transformer_width
    emb_width = self.embedding_width or 4 * first
    time = jnp.broadcast_to(jnp.asarray(time, jnp.float32), x.shape[:1])
    if self.logsnr_input:
      time = layers.logsnr_time(time)
    emb = layers.timestep_embedding(time, first).astype(self.dtype)
    emb = layers.TimestepMLP(emb_width, name="time_embedding", **kw)(emb)
    if self.num_classes is not None:
      emb = emb + nn.Embed(self.num_classes, emb_width, embedding_init=nn.initializers.normal(1.0),
                           name="class_embedding", **kw)(y)

    h = x.astype(self.dtype)
    if self.stem == "wavelet":
      h = layers.conv(first, name="stem", **kw)(wavelet.analysis(h, d.bit_length() - 1))
    elif d == 1:
      h = layers.conv(first, name="stem", **kw)(h)
    else:
      h = layers.conv(first, kernel=d, stride=d, padding="VALID", name="stem", **kw)(h)

    skips = []
    for level, channels in enumerate(self.channels):
      for i in range(self.num_res_blocks):
        h = self._res(h, emb, channels, f"down_{level}/res_{i}")
        if level in self.attention_levels:
          h = self._attn(h, f"down_{level}/attention_{i}")
        skips.append(h)
      h = nn.avg_pool(h, (2, 2), strides=(2, 2))

    batch, height, width, channels = h.shape
    if self.transformer_width % self.head_dim:
      raise ValueError(f"UViT: transformer_width={self.transformer_width} is not a multiple "
                       f"of head_dim={self.head_dim}.")
    if height != width:
      raise ValueError(f"UViT: the middle is {height}x{width}; expected square inputs.")
    tokens = layers.dense(self.transformer_width, name="to_tokens", **kw)(
        h.reshape(batch, height * width, channels))
    tokens = tokens + jnp.asarray(sincos_positions(height, self.transformer_width),
                                  self.dtype)
    tokens = transformer.Stack(
        self.transformer_depth, self.transformer_width // self.head_dim,
        mlp_ratio=self.mlp_ratio, dropout=self.dropout, remat=self.remat,
        deterministic=self.deterministic, attention_impl=self.attention_impl,
        name="transformer", **kw)(tokens, emb, context)
    tokens = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="norm_tokens",
                          **kw)(tokens)
    h = layers.dense(channels, name="from_tokens", **kw)(tokens).reshape(h.shape)

    for level in reversed(range(len(self.channels))):
      h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
      for i in range(self.num_res_blocks):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = self._res(h, emb, self.channels[level], f"up_{level}/res_{i}")
        if level in self.attention_levels:
          h = self._attn(h, f"up_{level}/attention_{i}")

    h = jax.nn.silu(layers.GroupNorm(self.groups, 1e-5, name="norm_out", **kw)(h))
    if self.stem == "wavelet":
      levels = d.bit_length() - 1
      h = layers.conv(self.out_channels * 4**levels, zero_init=True, name="head", **kw)(h)
      return wavelet.synthesis(h, levels)
    if d == 1:
      return layers.conv(self.out_channels, zero_init=True, name="head", **kw)(h)
    h = layers.dense(d * d * self.out_channels, zero_init=True, name="head", **kw)(h)
    return einops.rearrange(h, "b h w (p q c) -> b (h p) (w q) c", p=d, q=d)
