"""Denoising losses: eps / x0 / v targets, per-example weighting, multiscale and VLB terms.

`diffusion_loss(...)` returns one value per example, so that the training step can average,
mask or log them. Weightings (of the squared error in the prediction's own space):
* 'uniform': plain MSE (LDM's L_simple for eps, the v-MSE for v);
* 'min_snr': Hang et al. (2023), min(SNR, gamma) in x0 units, i.e. min(SNR, gamma) / SNR
  for eps, min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma) for x0;
* 'eps': the MSE measured in eps space whatever the model predicts: simple diffusion's
  (Hoogeboom et al. 2023) eps-loss for a v-parameterised model. eps - eps_hat equals
  alpha (v - v_hat) and (alpha / sigma) (x0_hat - x0), so the weight is alpha^2 for v and
  SNR for x0.

simple diffusion's multiscale loss (`multiscale_base=s0`) replaces the per-example MSE by
sum over s in {s0, 2 s0, ..., d} of (1 / s) * MSE(D_s[out], D_s[target]), where d is the
image size and D_s average-pools to s x s; the paper gives the lower resolutions more
relative weight because the high-resolution terms are noisier. D_s is linear, so pooling the
error in the prediction's space and then applying the weighting above equals pooling eps.

The LDM objective (CompVis `p_losses`) adds a learned per-timestep log-variance and the
variational bound: see `ldm_objective` and `vlb_weights`.
"""

import jax.numpy as jnp
import numpy as np

from ldm_jax.diffusion import process

WEIGHTINGS = ("uniform", "min_snr", "eps")


def loss_weight(*, snr, prediction: str, weighting: str = "uniform", gamma: float = 5.0):
  """Per-example weights [B] for the squared error of `prediction`."""
  if prediction not in process.PREDICTIONS:
    raise ValueError(f"prediction={prediction!r}: expected one of {process.PREDICTIONS}.")
  if weighting == "uniform":
    return jnp.ones_like(snr)
  # Factor that turns a squared error in this space into one in x0 space.
  to_x0 = {"eps": 1.0 / snr, "v": 1.0 / (snr + 1.0), "x0": jnp.ones_like(snr)}[prediction]
  if weighting == "min_snr":
    return jnp.minimum(snr, gamma) * to_x0
  if weighting == "eps":
    return snr * to_x0
  raise ValueError(f"weighting={weighting!r}: expected one of {WEIGHTINGS}.")


def multiscale_sizes(image_size: int, base: int) -> tuple[int, ...]:
  """(base, 2 base, 4 base, ..., image_size); image_size must be base times a power of two."""
  sizes = [base]
  while sizes[-1] < image_size:
    sizes.append(sizes[-1] * 2)
  if base < 1 or sizes[-1] != image_size:
    raise ValueError(f"multiscale_base={base}: the image size {image_size} must be "
                     f"multiscale_base times a power of two.")
  return tuple(sizes)


def _avg_pool(x, factor: int):
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def multiscale_mse(error, base: int):
  """sum_s (1 / s) mean(D_s[error]^2) per example, for NHWC `error` with H = W = d."""
  if error.ndim != 4 or error.shape[1] != error.shape[2]:
    raise ValueError(f"multiscale loss: expected square NHWC images, got shape {error.shape}.")
  d = error.shape[1]
  total = 0.0
  for s in multiscale_sizes(d, base):
    pooled = _avg_pool(error, d // s)
    total = total + jnp.square(pooled).mean(axis=(1, 2, 3)) / s
  return total


def diffusion_loss(*, prediction: str, model_out, x0, eps, alpha, sigma,
                   weighting: str = "uniform", gamma: float = 5.0,
                   multiscale_base: int | None = None):
  """Weighted squared error of `model_out` against the prediction's target, shape [B].

  `alpha`, `sigma` broadcast against x0 (e.g. process.broadcast(alpha_t, x0)).
  """
  target = process.target(prediction=prediction, x0=x0, eps=eps, alpha=alpha, sigma=sigma)
  error = model_out.astype(jnp.float32) - target.astype(jnp.float32)
  if multiscale_base is None:
    per_example = jnp.square(error).reshape(error.shape[0], -1).mean(axis=-1)
  else:
    per_example = multiscale_mse(error, multiscale_base)
  snr = (jnp.square(alpha) / jnp.square(sigma)).reshape(error.shape[0], -1)[:, 0]
  return loss_weight(snr=snr, prediction=prediction, weighting=weighting,
                     gamma=gamma) * per_example


def vlb_weights(alphas_cumprod, prediction: str) -> np.ndarray:
  """Per-timestep factors [T] turning a squared error (mean over pixels) into DDPM's L_t.

  L_t = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) with the posterior variance as the
  reverse variance is c_t^2 |x0 - x0_hat|^2 / (2 var_t), c_t = beta_t sqrt(abar_{t-1}) /
  (1 - abar_t); converted to each prediction space with the identities in the module
  docstring. For eps this is CompVis' `lvlb_weights` (tested); for x0 and v CompVis uses
  other factors (0.5 sqrt(abar) / (2 - abar) and 1), which do not give one bound for one
  model across parameterisations. Entry 0 copies entry 1, as CompVis does (var_0 = 0).
  """
  abar = np.asarray(alphas_cumprod, np.float64)
  abar_prev = np.append(1.0, abar[:-1])
  betas = 1.0 - abar / abar_prev
  posterior_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  coef_sq = np.square(betas * np.sqrt(abar_prev) / (1.0 - abar))
  with np.errstate(divide="ignore", invalid="ignore"):
    x0_weight = coef_sq / (2.0 * posterior_var)
  snr = abar / (1.0 - abar)
  to_space = {"eps": 1.0 / snr, "v": 1.0 / (snr + 1.0), "x0": np.ones_like(snr)}
  if prediction not in to_space:
    raise ValueError(f"prediction={prediction!r}: expected one of {process.PREDICTIONS}.")
  weights = x0_weight * to_space[prediction]
  weights[0] = weights[1]
  return weights.astype(np.float32)


def ldm_objective(mse, t, *, logvar=None, vlb_weight_table=None, simple_weight: float = 1.0,
                  elbo_weight: float = 0.0):
  """The LDM training loss per example [B] from the unweighted `mse` [B] at timesteps `t`.

  simple_weight * (mse / exp(logvar[t]) + logvar[t]) + elbo_weight * vlb_weight_table[t] * mse,
  as in CompVis `LatentDiffusion.p_losses`; `logvar` is the [T] table the training state
  holds (learned when `learn_logvar`, else zeros or None), `vlb_weight_table` comes from
  `vlb_weights`. Averaging over the batch gives CompVis' scalar loss.
  """
  loss = mse
  if logvar is not None:
    logvar_t = jnp.asarray(logvar)[t]
    loss = mse * jnp.exp(-logvar_t) + logvar_t
  loss = simple_weight * loss
  if elbo_weight:
    if vlb_weight_table is None:
      raise ValueError("elbo_weight > 0 needs vlb_weight_table (losses.vlb_weights).")
    loss = loss + elbo_weight * jnp.asarray(vlb_weight_table)[t] * mse
  return loss
