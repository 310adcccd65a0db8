"""The KL autoencoder's diagonal Gaussian posterior."""

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class DiagonalGaussian:
  """N(mean, exp(logvar)) per latent element; NHWC arrays, float32."""
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
    """Splits [mean | logvar] along channels; logvar is clipped to [-30, 20] as in LDM."""
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return cls(mean=mean, logvar=jnp.clip(logvar, -30.0, 20.0))

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def sample(self, key: jax.Array) -> jax.Array:
    return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self) -> jax.Array:
    """KL(q || N(0, I)) summed over each example's latent elements: shape [batch]."""
    terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar
    return 0.5 * terms.reshape(terms.shape[0], -1).sum(axis=-1)
