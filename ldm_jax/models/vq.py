"""The VQ-regularised autoencoder: a codebook with a straight-through estimator."""

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.models.autoencoder import AutoencoderBase
from ldm_jax.nn import layers

Dtype = Any


class Quantized(NamedTuple):
  latents: jax.Array  # Codebook vectors, with straight-through gradients to the encoder.
  indices: jax.Array  # [batch, height, width] int32
  loss: jax.Array  # beta * commitment + codebook, scalar
  perplexity: jax.Array  # exp(entropy) of the code usage in this batch


class VectorQuantizer(nn.Module):
  """Nearest-codebook-vector quantisation (van den Oord et al.), distances in float32."""
  num_embeddings: int
  embed_dim: int
  beta: float = 0.25
  param_dtype: Dtype = jnp.float32

  def setup(self):
    bound = 1.0 / self.num_embeddings  # LDM/taming's uniform(-1/n, 1/n) initialisation.
    init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    self.embedding = nn.Embed(self.num_embeddings, self.embed_dim,
                              embedding_init=init,
                              param_dtype=self.param_dtype)

  def codebook(self) -> jax.Array:
    return self.embedding.embedding.astype(jnp.float32)

  def lookup(self, indices):
    return jnp.take(self.codebook(), indices, axis=0)

  def __call__(self, z) -> Quantized:
    z = z.astype(jnp.float32)
    codebook = self.codebook()
    flat = z.reshape(-1, z.shape[-1])
    distances = (jnp.sum(flat**2, axis=1, keepdims=True) + jnp.sum(codebook**2, axis=1)
                 - 2.0 * flat @ codebook.T)
    indices = jnp.argmin(distances, axis=1).astype(jnp.int32)
    z_q = jnp.take(codebook, indices, axis=0).reshape(z.shape)
    sg = jax.lax.stop_gradient
    loss = self.beta * jnp.mean((sg(z_q) - z) ** 2) + jnp.mean((z_q - sg(z)) ** 2)
    usage = jnp.mean(jax.nn.one_hot(indices, self.num_embeddings), axis=0)
    perplexity = jnp.exp(-jnp.sum(usage * jnp.log(usage + 1e-10)))
    return Quantized(latents=z + sg(z_q - z), indices=indices.reshape(z.shape[:-1]),
                     loss=loss, perplexity=perplexity)


class VQModel(AutoencoderBase):
  """Encoder -> quant_conv -> VectorQuantizer -> post_quant_conv -> Decoder.

  `encode(x)` returns the pre-quantisation latents, `quantize(h)` a `Quantized`,
  `decode(z_q)` the image, `decode_indices(indices)` the image of code indices and
  `__call__(x)` (reconstruction, Quantized).
  """
  ch_mult: Sequence[int] = (1, 2, 4)
  z_channels: int = 3
  embed_dim: int = 3
  n_embed: int = 8192
  beta: float = 0.25

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder, self.decoder = self.coders(double_z=False)
    self.quant_conv = layers.conv(self.embed_dim, kernel=1, **kw)
    self.quantize = VectorQuantizer(self.n_embed, self.embed_dim, self.beta,
                                    param_dtype=self.param_dtype)
    self.post_quant_conv = layers.conv(self.z_channels, kernel=1, **kw)

  def encode(self, x):
    return self.quant_conv(self.encoder(x))

  def quantize_latents(self, h) -> Quantized:
    return self.quantize(h)

  def decode(self, z_q):
    return self.decoder(self.post_quant_conv(z_q.astype(self.dtype)))

  def decode_indices(self, indices):
    return self.decode(self.quantize.lookup(indices))

  def __call__(self, x):
    quantized = self.quantize(self.encode(x))
    return self.decode(quantized.latents), quantized
