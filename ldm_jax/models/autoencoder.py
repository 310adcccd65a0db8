"""The perceptual-compression autoencoder (LDM's first stage) and its KL-regularised model.

Encoder/Decoder follow the CompVis hyper-parameters: `ch`, `ch_mult`, `num_res_blocks`,
`attn_resolutions` (resolutions, from `resolution` down, that get a self-attention block
after each ResBlock), `z_channels`, `double_z`, `dropout`. Downsampling factor
f = 2 ** (len(ch_mult) - 1).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.models.distributions import DiagonalGaussian
from ldm_jax.nn import attention
from ldm_jax.nn import layers
from ldm_jax.nn import remat as remat_lib

Dtype = Any
GROUPS, EPSILON = 32, 1e-6


class _Coder(nn.Module):
  """Settings and blocks shared by the encoder and the decoder."""
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = ()
  resolution: int = 256
  dropout: float = 0.0
  deterministic: bool = True
  remat: bool | str = False  # See nn/remat.py.
  attention_impl: str | None = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def res(self, channels, name):
    block = remat_lib.wrap(layers.ResBlock, self.remat)
    return block(channels, groups=GROUPS, epsilon=EPSILON, dropout=self.dropout,
                 deterministic=self.deterministic, dtype=self.dtype,
                 param_dtype=self.param_dtype, name=name)

  def attn(self, name):
    return attention.SpatialSelfAttention(heads=1, groups=GROUPS, epsilon=EPSILON,
                                          attention_impl=self.attention_impl,
                                          dtype=self.dtype, param_dtype=self.param_dtype,
                                          name=name)

  def mid(self, h):
    h = self.res(h.shape[-1], "mid_block/resnets_0")(h)
    h = self.attn("mid_block/attentions_0")(h)
    return self.res(h.shape[-1], "mid_block/resnets_1")(h)

  def out(self, h, channels):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = jax.nn.silu(layers.GroupNorm(GROUPS, EPSILON, name="conv_norm_out", **kw)(h))
    return layers.conv(channels, name="conv_out", **kw)(h)


class Encoder(_Coder):
  z_channels: int = 4
  double_z: bool = True

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.conv(self.ch * self.ch_mult[0], name="conv_in", **kw)(x.astype(self.dtype))
    resolution = self.resolution
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = self.res(self.ch * mult, f"down_blocks_{level}/resnets_{i}")(h)
        if resolution in self.attn_resolutions:
          h = self.attn(f"down_blocks_{level}/attentions_{i}")(h)
      if level != len(self.ch_mult) - 1:
        h = layers.Downsample(h.shape[-1], asymmetric_pad=True,
                              name=f"down_blocks_{level}/downsamplers_0", **kw)(h)
        resolution //= 2
    return self.out(self.mid(h), 2 * self.z_channels if self.double_z else self.z_channels)


class Decoder(_Coder):
  out_ch: int = 3

  @nn.compact
  def __call__(self, z):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.conv(self.ch * self.ch_mult[-1], name="conv_in", **kw)(z.astype(self.dtype))
    h = self.mid(h)
    resolution = self.resolution // 2 ** (len(self.ch_mult) - 1)
    for up, mult in enumerate(reversed(self.ch_mult)):
      for i in range(self.num_res_blocks + 1):
        h = self.res(self.ch * mult, f"up_blocks_{up}/resnets_{i}")(h)
        if resolution in self.attn_resolutions:
          h = self.attn(f"up_blocks_{up}/attentions_{i}")(h)
      if up != len(self.ch_mult) - 1:
        h = layers.Upsample(h.shape[-1], name=f"up_blocks_{up}/upsamplers_0", **kw)(h)
        resolution *= 2
    return self.out(h, self.out_ch)


class AutoencoderBase(_Coder):
  """Fields shared by the KL and VQ models; `coders()` builds their encoder and decoder."""
  in_channels: int = 3
  out_ch: int = 3
  z_channels: int = 4
  embed_dim: int = 4

  def coders(self, double_z: bool) -> tuple[Encoder, Decoder]:
    common = {f: getattr(self, f) for f in _Coder.__dataclass_fields__
              if f not in ("parent", "name")}
    return (Encoder(z_channels=self.z_channels, double_z=double_z, **common),
            Decoder(out_ch=self.out_ch, **common))


class AutoencoderKL(AutoencoderBase):
  """Encoder -> quant_conv -> DiagonalGaussian -> post_quant_conv -> Decoder.

  `encode(x)` returns the posterior, `decode(z)` the image, `__call__(x)` both (sampling the
  posterior with the 'sample' RNG stream unless `sample_posterior=False`).
  """

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder, self.decoder = self.coders(double_z=True)
    self.quant_conv = layers.conv(2 * self.embed_dim, kernel=1, **kw)
    self.post_quant_conv = layers.conv(self.z_channels, kernel=1, **kw)

  def encode(self, x) -> DiagonalGaussian:
    return DiagonalGaussian.from_moments(self.quant_conv(self.encoder(x)))

  def decode(self, z):
    return self.decoder(self.post_quant_conv(z.astype(self.dtype)))

  def __call__(self, x, sample_posterior: bool = True):
    posterior = self.encode(x)
    z = posterior.sample(self.make_rng("sample")) if sample_posterior else posterior.mode()
    return self.decode(z), posterior
