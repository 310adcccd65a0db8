"""Stage one: the KL or VQ autoencoder with L1/L2 + LPIPS + PatchGAN (+ KL or codebook).

The objective follows CompVis `LPIPSWithDiscriminator` (KL) and taming
`VQLPIPSWithDiscriminator` (VQ): see training/autoencoder_loss.py for each term and its
reduction. Generator (autoencoder + log-variance) and discriminator have their own optax
optimisers and are both updated in one jitted step, from the same forward pass (PyTorch
Lightning runs them one after the other, the discriminator seeing the updated autoencoder).

The adaptive weight needs the gradients of the NLL and of the generator loss at the
decoder's last layer: the decoder's input to `conv_out` is captured in the forward pass and
only `conv_out` is differentiated, so this costs one LPIPS and one discriminator pass, not a
second autoencoder backward.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils

from ldm_jax import visualize
from ldm_jax.data import fields as fields_lib
from ldm_jax.metrics import reconstruction
from ldm_jax.models import factory
from ldm_jax.models.discriminator import NLayerDiscriminator
from ldm_jax.nn import layers
from ldm_jax.training import autoencoder_loss as L
from ldm_jax.training import optim
from ldm_jax.training import state as state_lib
from ldm_jax.training.state import TrainState

DISC_LOSSES = {"hinge": L.hinge_d_loss, "vanilla": L.vanilla_d_loss}


def _decoder_hidden_filter(module, method_name):
  return module.name == "conv_norm_out" and method_name == "__call__"


class AutoencoderStage:
  batch_keys = ("image",)

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.loss = config.loss
    self.kind = config.autoencoder.type
    self.model = factory.build_autoencoder(config.autoencoder)
    self.disc = NLayerDiscriminator(ndf=self.loss.disc_ndf, n_layers=self.loss.disc_layers)
    if self.loss.disc_loss not in DISC_LOSSES:
      raise ValueError(f"loss.disc_loss={self.loss.disc_loss!r}: expected one of "
                       f"{sorted(DISC_LOSSES)}.")
    # Frozen inputs of the steps that are not trained state (the LPIPS network).
    self.constants = _constants(self.loss)
    self._reconstruct_jit = jax.jit(self.reconstruct)
    size, channels = config.data.image_size, config.autoencoder.in_channels
    self._example = jnp.zeros((1, size, size, channels), jnp.float32)
    # Shapes only: `optimizer.frozen` patterns are resolved against these trees.
    abstract, _ = jax.eval_shape(self._init_params, jax.random.key(0))
    self.optimizers = {
        "generator": optim.create_optimizer(config.optimizer, num_steps=config.num_steps,
                                            params=abstract["generator"]),
        "discriminator": optim.create_optimizer(config.disc_optimizer,
                                                num_steps=config.num_steps,
                                                params=abstract["discriminator"])}

  def prepare(self, batch, mesh, extra=()):
    del mesh
    return fields_lib.select(batch, self.batch_keys + tuple(extra))

  # --- state -------------------------------------------------------------------------------
  def _init_params(self, rng):
    """(params, discriminator batch statistics) of a new run."""
    k_ae, k_sample, k_disc = jax.random.split(rng, 3)
    ae = self.model.init({"params": k_ae, "sample": k_sample}, self._example)[
        "params"]
    disc = self.disc.init(k_disc, self._example, train=False)
    params = {"generator": {"autoencoder": ae,
                            "logvar": jnp.full((), self.loss.logvar_init, jnp.float32)},
              "discriminator": disc["params"]}
    return params, disc["batch_stats"]

  def init_state(self, rng) -> TrainState:
    params, batch_stats = self._init_params(rng)
    return TrainState.create(params=params, optimizers=self.optimizers, rng=rng,
                             model_state={"discriminator": batch_stats})

  # --- losses ------------------------------------------------------------------------------
  def _perceptual(self, consts, x, y):
    from ldm_jax.metrics import lpips  # pylint: disable=import-outside-toplevel
    return lpips.distance(consts["lpips"], x, y)

  def _forward(self, ae_params, x, key):
    """(reconstruction, regulariser terms dict, decoder hidden before conv_out)."""
    variables = {"params": ae_params}
    if self.kind == "kl":
      (recon, posterior), captured = self.model.apply(
          variables, x, rngs={"sample": key}, capture_intermediates=_decoder_hidden_filter,
          mutable=["intermediates"])
      reg = {"kl": posterior.kl().mean()}
    else:
      (recon, quantized), captured = self.model.apply(
          variables, x, capture_intermediates=_decoder_hidden_filter,
          mutable=["intermediates"])
      perplexity, usage = reconstruction.codebook_usage(quantized.indices,
                                                        self.config.autoencoder.n_embed)
      reg = {"codebook": quantized.loss, "perplexity": perplexity, "code_usage": usage}
    hidden = jax.nn.silu(captured["intermediates"]["decoder"]["conv_norm_out"]["__call__"][0])
    return recon.astype(jnp.float32), reg, hidden

  def _nll(self, consts, x, recon, logvar):
    p = self._perceptual(consts, x, recon) if self.loss.perceptual_weight else None
    return L.reconstruction_nll(
        x, recon, logvar=logvar if self.kind == "kl" else None, perceptual=p,
        perceptual_weight=self.loss.perceptual_weight, rec_loss=self.loss.rec_loss,
        reduction="sum_over_batch" if self.kind == "kl" else "mean")

  def _disc_apply(self, params, batch_stats, images):
    return self.disc.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                           mutable=["batch_stats"])

  def _adaptive_weight(self, consts, gparams, dparams, batch_stats, x, hidden):
    conv_out = gparams["autoencoder"]["decoder"]["conv_out"]
    out_conv = layers.conv(conv_out["kernel"].shape[-1])
    hidden = jax.lax.stop_gradient(hidden)
    logvar = jax.lax.stop_gradient(gparams["logvar"])

    def recon_of(kernel):
      params = {"kernel": kernel, "bias": conv_out["bias"]}
      return out_conv.apply({"params": params}, hidden).astype(jnp.float32)

    def nll_of(kernel):
      return self._nll(consts, x, recon_of(kernel), logvar)[0]

    def g_of(kernel):
      logits, _ = self._disc_apply(dparams, batch_stats, recon_of(kernel))
      return L.generator_loss(logits)

    kernel = jax.lax.stop_gradient(conv_out["kernel"])
    weight = L.adaptive_weight(jax.grad(nll_of)(kernel), jax.grad(g_of)(kernel))
    return weight * self.loss.disc_weight

  def _generator_loss(self, gparams, dparams, batch_stats, consts, x, key, disc_factor, step):
    logvar = gparams["logvar"] if self.loss.learn_logvar else jax.lax.stop_gradient(
        gparams["logvar"])
    recon, reg, hidden = self._forward(gparams["autoencoder"], x, key)
    nll, rec = self._nll(consts, x, recon, logvar)
    logits_fake, new_stats = self._disc_apply(dparams, batch_stats, recon)
    g_loss = L.generator_loss(logits_fake)
    d_weight = jax.lax.cond(
        step >= self.loss.disc_start,
        lambda: self._adaptive_weight(consts, gparams, dparams, batch_stats, x, hidden),
        lambda: jnp.zeros((), jnp.float32))
    total = nll + d_weight * disc_factor * g_loss
    if self.kind == "kl":
      total = total + self.loss.kl_weight * reg["kl"]
    else:
      total = total + self.loss.codebook_weight * reg["codebook"]
    metrics = {"loss": total, "nll": nll, "rec": rec, "g_loss": g_loss, "d_weight": d_weight,
               "logvar": gparams["logvar"], **reg}
    return total, (recon, new_stats["batch_stats"], metrics)

  def _disc_loss(self, dparams, batch_stats, x, recon, disc_factor):
    logits_real, stats = self._disc_apply(dparams, batch_stats, jax.lax.stop_gradient(x))
    logits_fake, stats = self._disc_apply(dparams, stats["batch_stats"],
                                          jax.lax.stop_gradient(recon))
    d_loss = disc_factor * DISC_LOSSES[self.loss.disc_loss](logits_real, logits_fake)
    return d_loss, (stats["batch_stats"], {"d_loss": d_loss,
                                           "logits_real": logits_real.mean(),
                                           "logits_fake": logits_fake.mean()})

  # --- steps -------------------------------------------------------------------------------
  def train_step(self, state: TrainState, batch, consts):
    x = batch["image"].astype(jnp.float32)
    disc_factor = L.adopt_weight(self.loss.disc_factor, state.step, self.loss.disc_start)
    gparams, dparams = state.params["generator"], state.params["discriminator"]
    stats = state.model_state["discriminator"]
    (_, (recon, stats, g_metrics)), g_grads = jax.value_and_grad(
        self._generator_loss, has_aux=True)(gparams, dparams, stats, consts, x,
                                            state.step_key("posterior"), disc_factor,
                                            state.step)
    (_, (stats, d_metrics)), d_grads = jax.value_and_grad(self._disc_loss, has_aux=True)(
        dparams, stats, x, recon, disc_factor)
    new_params, new_opt = {}, {}
    for name, grads in (("generator", g_grads), ("discriminator", d_grads)):
      updates, new_opt[name] = self.optimizers[name].update(
          grads, state.opt_state[name], state.params[name])
      new_params[name] = optax.apply_updates(state.params[name], updates)
    finite = state_lib.all_finite(g_grads, d_grads, g_metrics, d_metrics)
    new_state = state.replace(params=new_params, opt_state=new_opt,
                              model_state={"discriminator": stats})
    metrics = {**g_metrics, **d_metrics, "disc_factor": disc_factor,
               "g_grad_norm": optax.tree_utils.tree_norm(g_grads),
               "d_grad_norm": optax.tree_utils.tree_norm(d_grads),
               "learning_rate": optim.current_learning_rate(self.config.optimizer,
                                                            self.config.num_steps, state.step),
               "finite": finite.astype(jnp.float32)}
    return state_lib.keep_if(finite, new_state, state), metrics

  def reconstruct(self, params, x):
    """Deterministic reconstruction (posterior mode / quantised latents)."""
    if self.kind == "kl":
      return self.model.apply({"params": params}, x, sample_posterior=False)[0]
    return self.model.apply({"params": params}, x)[0]

  def eval_step(self, state: TrainState, batch, consts):
    x = batch["image"].astype(jnp.float32)
    mask = batch["mask"].astype(jnp.float32)
    recon = jnp.clip(self.reconstruct(state.params["generator"]["autoencoder"], x)
                     .astype(jnp.float32), -1.0, 1.0)
    per_example = {"psnr": reconstruction.psnr(x, recon),
                   "ssim": reconstruction.ssim(x, recon),
                   "l1": jnp.abs(x - recon).mean(axis=(1, 2, 3))}
    if self.loss.perceptual_weight:
      per_example["lpips"] = self._perceptual(consts, x, recon)
    return {k: clu_metrics.Average.from_model_output(v, mask=mask > 0)
            for k, v in per_example.items()}

  def image_grids(self, state: TrainState, batch):
    x = batch["image"]
    recon = self._reconstruct_jit(state.params["generator"]["autoencoder"], x)
    x, recon = (np.asarray(multihost_utils.process_allgather(a, tiled=True))[:8]
                for a in (x, recon))
    pairs = np.stack([x, np.clip(recon, -1, 1)], axis=1).reshape((-1,) + x.shape[1:])
    return {"reconstructions": visualize.make_grid(pairs, columns=4)[None]}

  def finalize(self, state: TrainState, config, mesh, abandon=None):
    """The latent scale_factor = 1 / std of the latents over the training split (None when
    `abandon()` turned true on the way)."""
    return latent_statistics(self, state.params["generator"]["autoencoder"], config, mesh,
                             abandon=abandon)


def latent_statistics(stage: AutoencoderStage, ae_params, config, mesh,
                      max_batches: int | None = None, abandon=None) -> dict | None:
  """Mean, std and scale_factor (1 / std) of the latents the LDM stage will see: posterior
  samples for KL models (as CompVis' get_first_stage_encoding), pre-quantisation latents
  for VQ (as its VQModelInterface), over the train split without augmentation."""
  from ldm_jax.data import pipeline  # pylint: disable=import-outside-toplevel  (TensorFlow)
  max_batches = max_batches or config.get("scale_factor_batches")
  iterator = pipeline.create_iterator(config.data, seed=config.seed, mesh=mesh, train=False,
                                      split=config.data.train_split)

  @jax.jit
  def moments(x, mask, key):
    if stage.kind == "kl":
      z = stage.model.apply({"params": ae_params}, x, method="encode").sample(key)
    else:
      z = stage.model.apply({"params": ae_params}, x, method="encode")
    z = z.astype(jnp.float32)
    m = mask.reshape((-1,) + (1,) * (z.ndim - 1)) * jnp.ones_like(z)
    return (m * z).sum(), (m * z * z).sum(), m.sum()

  s1 = s2 = n = 0.0
  key = jax.random.key(config.seed + 1)
  for i, batch in enumerate(iterator):
    if max_batches and i >= max_batches:
      break
    if abandon is not None and abandon():
      logging.warning("Latent statistics abandoned after %d batches.", i)
      return None
    a, b, c = jax.device_get(moments(batch["image"], batch["mask"], jax.random.fold_in(key, i)))
    s1, s2, n = s1 + float(a), s2 + float(b), n + float(c)
  mean = s1 / n
  std = float(np.sqrt(max(s2 / n - mean * mean, 0.0) * n / max(n - 1.0, 1.0)))
  return {"latent_mean": mean, "latent_std": std, "scale_factor": 1.0 / std,
          "num_latent_values": int(n)}


def _constants(loss: ml_collections.ConfigDict) -> dict:
  """{'lpips': params} from loss.lpips_weights, or {} when the perceptual weight is 0."""
  if not loss.perceptual_weight:
    return {}
  if not loss.get("lpips_weights"):
    raise ValueError(
        "loss.perceptual_weight > 0 needs LPIPS weights: set loss.lpips_weights to a file "
        "made by `python -m ldm_jax.eval.lpips_convert --vgg=<torchvision vgg16 .pth> "
        "--heads=<lpips package weights/v0.1/vgg.pth> --out=<file>`, or set "
        "loss.perceptual_weight=0 to train without the perceptual term. A randomly "
        "initialised VGG is never used as a perceptual loss.")
  from ldm_jax.metrics import lpips  # pylint: disable=import-outside-toplevel
  return {"lpips": lpips.load_params(loss.lpips_weights)}
