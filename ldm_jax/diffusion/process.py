"""The forward process and conversions between eps, x0 and v predictions.

All take `alpha`, `sigma` broadcastable to x (e.g. shape [B, 1, 1, 1]); keyword-only.
v = alpha eps - sigma x0 (Salimans & Ho).
"""

import jax.numpy as jnp

PREDICTIONS = ("eps", "x0", "v")


def broadcast(values, x):
  """[B] -> [B, 1, 1, ...] to multiply an x of rank x.ndim (dtype kept: tables are float32)."""
  values = jnp.asarray(values)
  return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def q_sample(*, x0, eps, alpha, sigma):
  return alpha * x0 + sigma * eps


def x0_from(*, prediction, x, out, alpha, sigma):
  if prediction == "eps":
    return (x - sigma * out) / alpha
  if prediction == "x0":
    return out
  if prediction == "v":
    return alpha * x - sigma * out
  raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}.")


def eps_from(*, prediction, x, out, alpha, sigma):
  if prediction == "eps":
    return out
  if prediction == "x0":
    return (x - alpha * out) / sigma
  if prediction == "v":
    return sigma * x + alpha * out
  raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}.")


def v_from(*, x0, eps, alpha, sigma):
  return alpha * eps - sigma * x0


def target(*, prediction, x0, eps, alpha, sigma):
  """What a model with this parameterisation is trained to output."""
  if prediction == "eps":
    return eps
  if prediction == "x0":
    return x0
  if prediction == "v":
    return v_from(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
  raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}.")
