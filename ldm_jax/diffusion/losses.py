"""Denoising losses: eps / x0 / v targets with per-example weighting.

`diffusion_loss(...)` returns one value per example (mean over the other axes), so that the
training step can average, mask or log them. Weightings:
* 'uniform': plain MSE in the prediction's own space (LDM's L_simple for eps);
* 'min_snr': Hang et al. (2023), min(SNR, gamma) expressed for the prediction type, i.e.
  min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma) for x0.
"""

import jax.numpy as jnp

from ldm_jax.diffusion import process

WEIGHTINGS = ("uniform", "min_snr")


def loss_weight(*, snr, prediction: str, weighting: str = "uniform", gamma: float = 5.0):
  """Per-example weights [B] for the squared error of `prediction`."""
  if weighting == "uniform":
    return jnp.ones_like(snr)
  if weighting != "min_snr":
    raise ValueError(f"weighting={weighting!r}: expected one of {WEIGHTINGS}.")
  clipped = jnp.minimum(snr, gamma)
  if prediction == "eps":
    return clipped / snr
  if prediction == "v":
    return clipped / (snr + 1.0)
  if prediction == "x0":
    return clipped
  raise ValueError(f"prediction={prediction!r}: expected one of {process.PREDICTIONS}.")


def diffusion_loss(*, prediction: str, model_out, x0, eps, alpha, sigma,
                   weighting: str = "uniform", gamma: float = 5.0):
  """Weighted squared error of `model_out` against the prediction's target, shape [B].

  `alpha`, `sigma` broadcast against x0 (e.g. process.broadcast(alpha_t, x0)).
  """
  target = process.target(prediction=prediction, x0=x0, eps=eps, alpha=alpha, sigma=sigma)
  error = jnp.square(model_out.astype(jnp.float32) - target.astype(jnp.float32))
  per_example = error.reshape(error.shape[0], -1).mean(axis=-1)
  snr = (jnp.square(alpha) / jnp.square(sigma)).reshape(error.shape[0], -1)[:, 0]
  return loss_weight(snr=snr, prediction=prediction, weighting=weighting,
                     gamma=gamma) * per_example
