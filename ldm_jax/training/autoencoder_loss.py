"""The autoencoders' adversarial + perceptual objectives (LDM / taming), as pure functions.

CompVis' `LPIPSWithDiscriminator` (KL autoencoder) and taming's `VQLPIPSWithDiscriminator`
(VQ autoencoder) become small functions that a training step composes; nothing here holds
parameters or calls a network. The step supplies the discriminator logits, the LPIPS values
and the gradients w.r.t. the decoder's last layer. Generator side (their optimizer_idx=0):

  KL: loss = nll + kl_weight * kl_loss(mean, logvar) + d_weight * disc_factor * g
      with nll = reconstruction_nll(x, recon, logvar=logvar, perceptual=lpips, ...).nll
  VQ: loss = nll + codebook_weight * codebook_loss + d_weight * disc_factor * g
      with nll = reconstruction_nll(x, recon, logvar=None, reduction="mean", ...).nll
  g = generator_loss(logits_fake), disc_factor = adopt_weight(factor, step, disc_start),
  d_weight = adaptive_weight(grad of nll, grad of g, discriminator_weight=disc_weight), both
  gradients w.r.t. the decoder's last conv kernel. CompVis sets d_weight = 0 when its
  configured disc_factor is 0; otherwise both originals compute it from the start, before
  disc_start too (where disc_factor makes the GAN term 0 anyway).

Discriminator side (optimizer_idx=1): disc_factor * hinge_d_loss(real, fake) (or vanilla),
on logits of the inputs and of the reconstructions with gradients stopped. The originals run
the discriminator in training mode throughout: BatchNorm uses batch statistics, and every
call moves the running ones (once on the generator side, then real and fake in two separate
calls, threading batch_stats; one call on the concatenation would pool their statistics).

Reductions, as in the originals: the KL model's nll and kl are sums over each example's
elements averaged over the batch (sum / batch); the VQ model's reconstruction loss is a mean
over all elements; logits are averaged over all elements.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ldm_jax.models.distributions import DiagonalGaussian

REC_LOSSES = ("l1", "l2")


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
  real = jnp.mean(jax.nn.relu(1.0 - logits_real.astype(jnp.float32)))
  fake = jnp.mean(jax.nn.relu(1.0 + logits_fake.astype(jnp.float32)))
  return 0.5 * (real + fake)


def vanilla_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """0.5 * (mean(softplus(-real)) + mean(softplus(fake))): the non-saturating GAN loss."""
  real = jnp.mean(jax.nn.softplus(-logits_real.astype(jnp.float32)))
  fake = jnp.mean(jax.nn.softplus(logits_fake.astype(jnp.float32)))
  return 0.5 * (real + fake)


DISC_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array, *,
                       kind: str = "hinge") -> jax.Array:
  """`hinge_d_loss` or `vanilla_d_loss`, by name (taming's `disc_loss` option)."""
  if kind not in DISC_LOSSES:
    raise ValueError(f"discriminator loss {kind!r}: expected one of {sorted(DISC_LOSSES)}.")
  return DISC_LOSSES[kind](logits_real, logits_fake)


def adopt_weight(weight, step, threshold, value: float = 0.0) -> jax.Array:
  """`value` before `threshold` steps, `weight` from then on; `step` may be traced."""
  return jnp.where(jnp.asarray(step) < threshold, jnp.float32(value),
                   jnp.asarray(weight, jnp.float32))


def generator_loss(logits_fake: jax.Array) -> jax.Array:
  """-mean(logits of the reconstructions): the generator's adversarial loss."""
  return -jnp.mean(logits_fake.astype(jnp.float32))


def _global_norm(tree: Any) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError("adaptive_weight: a gradient pytree has no arrays.")
  return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves))


def adaptive_weight(nll_grads: Any, g_grads: Any, *, discriminator_weight: float = 1.0,
                    max_weight: float = 1e4, eps: float = 1e-4) -> jax.Array:
  """taming's `calculate_adaptive_weight`: balances the GAN gradient against the nll's.

  clip(||nll_grads|| / (||g_grads|| + eps), 0, max_weight) * discriminator_weight, with the
  gradient stopped. Both arguments are gradients w.r.t. the decoder's last layer (an array or
  a pytree; a pytree's norm is the norm of all its leaves together), the nll's and the
  generator loss's. taming clips *before* multiplying by its `discriminator_weight`, as here.
  """
  ratio = _global_norm(nll_grads) / (_global_norm(g_grads) + eps)
  return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight) * discriminator_weight)


def pixel_loss(x: jax.Array, recon: jax.Array, *, perceptual: jax.Array | None = None,
               perceptual_weight: float = 1.0, rec_loss: str = "l1") -> jax.Array:
  """Per-element |x - recon| (l1) or (x - recon)^2 (l2), plus perceptual_weight * LPIPS.

  `perceptual`: one LPIPS value per example ([batch] or [batch, 1, 1, 1]), added to every
  element of that example as the originals broadcast it; None for no perceptual term (their
  perceptual_weight=0). Float32, the shape of `x`. taming and CompVis use l1.
  """
  if rec_loss not in REC_LOSSES:
    raise ValueError(f"rec_loss={rec_loss!r}: expected one of {REC_LOSSES}.")
  if x.shape != recon.shape:
    raise ValueError(f"inputs {x.shape} and reconstructions {recon.shape} differ in shape.")
  diff = x.astype(jnp.float32) - recon.astype(jnp.float32)
  rec = jnp.abs(diff) if rec_loss == "l1" else jnp.square(diff)
  if perceptual is not None:
    batch = x.shape[0]
    if perceptual.size != batch:
      raise ValueError(f"perceptual has shape {perceptual.shape}; expected one value per "
                       f"example ({batch}).")
    per_example = perceptual.astype(jnp.float32).reshape((batch,) + (1,) * (x.ndim - 1))
    rec = rec + perceptual_weight * per_example
  return rec


class NLL(NamedTuple):
  nll: jax.Array  # The reduced negative log-likelihood (see reconstruction_nll).
  rec: jax.Array  # Mean of the per-element reconstruction (+ perceptual) loss, to log.


REDUCTIONS = ("sum_over_batch", "mean")


def reconstruction_nll(x: jax.Array, recon: jax.Array, *, logvar=0.0,
                       perceptual: jax.Array | None = None, perceptual_weight: float = 1.0,
                       rec_loss: str = "l1", reduction: str = "sum_over_batch",
                       weights: jax.Array | None = None) -> NLL:
  """The reconstruction term of both autoencoders' objectives, reduced as the originals do.

  Per element: rec from `pixel_loss`, then nll = rec / exp(logvar) + logvar.
  - KL model (CompVis `LPIPSWithDiscriminator`): reduction='sum_over_batch', the sum over all
    elements divided by the batch size (*not* a mean); `logvar` is CompVis' scalar
    `loss.logvar` (init `logvar_init`, trained only with `learn_logvar`).
  - VQ model (taming `VQLPIPSWithDiscriminator`): logvar=None (no such term) and
    reduction='mean', the mean over all elements.
  `weights` (broadcastable to x) multiply nll before the reduction: CompVis'
  `weighted_nll_loss`, which enters the loss, while its adaptive weight is taken from the
  unweighted nll, so a caller with weights calls once more without them for that.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}.")
  rec = pixel_loss(x, recon, perceptual=perceptual, perceptual_weight=perceptual_weight,
                   rec_loss=rec_loss)
  nll = rec
  if logvar is not None:
    logvar = jnp.asarray(logvar, jnp.float32)
    if logvar.ndim:
      raise ValueError(f"logvar must be a scalar, got shape {logvar.shape}.")
    nll = rec / jnp.exp(logvar) + logvar
  if weights is not None:
    nll = jnp.asarray(weights, jnp.float32) * nll
  total = jnp.sum(nll) / x.shape[0] if reduction == "sum_over_batch" else jnp.mean(nll)
  return NLL(nll=total, rec=jnp.mean(rec))


def kl_loss(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) summed over each example's latents, batch-averaged.

  CompVis: sum(posterior.kl()) / batch. Pass the clipped logvar of
  `DiagonalGaussian.from_moments` (CompVis clips to [-30, 20] too).
  """
  if mean.shape != logvar.shape:
    raise ValueError(f"mean {mean.shape} and logvar {logvar.shape} differ in shape.")
  return jnp.mean(DiagonalGaussian(mean=mean.astype(jnp.float32),
                                   logvar=logvar.astype(jnp.float32)).kl())
