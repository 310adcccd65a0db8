"""Stage two: training a latent diffusion model (ldm_jax/ldm/model.py) on a frozen first stage.

The model gives the objective, sampling and parameter layout; this stage adds what training
needs around it: one optimiser over `params['model'] = {'network', 'conditioner' (class/text
embedders, trained jointly), 'logvar' (when diffusion.learn_logvar)}`, the EMA (float32,
CompVis LitEma warm-up: decay_n = min(decay, (1 + n) / (10 + n)) at the n-th update), the
non-finite guard, metrics and sample grids. The frozen autoencoder's parameters (and a frozen
text encoder's, conditioning.type='frozen_text') are jit *arguments* (`consts['first_stage']`,
`consts['frozen']`), so they are never in the optimiser, never donated and never
checkpointed with the run.
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils

from ldm_jax import visualize
from ldm_jax.data import fields as fields_lib
from ldm_jax.ldm import model as model_lib
from ldm_jax.training import optim
from ldm_jax.training import state as state_lib
from ldm_jax.training.state import TrainState


def ema_decay(block: ml_collections.ConfigDict, num_updates):
  """The decay of the `num_updates`-th EMA update (1-based)."""
  decay = jnp.asarray(block.decay, jnp.float32)
  if block.get("warmup", True):
    n = jnp.asarray(num_updates, jnp.float32)
    decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
  return decay


class LdmStage:

  def __init__(self, config: ml_collections.ConfigDict):
    self.model = model_lib.LatentDiffusion(config)
    self.config = config = self.model.config  # In today's layout (config.network).
    self.cond = self.model.cond
    self.first_stage = self.model.first_stage
    fs_params = self.model.first_stage_params
    self.batch_keys = self.model.batch_keys
    self.constants = {"first_stage": fs_params} if fs_params is not None else {}
    if self.model.frozen_params:
      self.constants["frozen"] = self.model.frozen_params
    self.ema = config.get("ema")
    self.optimizers = {"model": optim.create_optimizer(config.optimizer,
                                                       num_steps=config.num_steps,
                                                       params=self.model.param_shapes())}
    self._grid_fn = None

  # --- host side ---------------------------------------------------------------------------
  def prepare(self, batch: dict, mesh, extra=()) -> dict:
    """The fields the jitted steps take; fields the mode makes on the host (captions ->
    token ids) become global arrays."""
    made = self.cond.host_fields(batch)
    if made:
      from ldm_jax.parallel import sharding  # pylint: disable=import-outside-toplevel
      batch = {**batch, **{k: jax.make_array_from_process_local_data(
          sharding.batch_sharding(mesh), v) for k, v in made.items()}}
    return fields_lib.select(batch, self.batch_keys + tuple(extra))

  # --- state -------------------------------------------------------------------------------
  def init_state(self, rng, pretrained=None) -> TrainState:
    """A new run's state; `pretrained`: {part: parameters} it starts from (`init_inputs`)."""
    params = {"model": self.model.init_params(rng)}
    for part, loaded in (pretrained or {}).items():
      params["model"][part] = jax.tree.map(lambda new, fresh: new.astype(fresh.dtype),
                                           loaded, params["model"][part])
    return TrainState.create(params=params, optimizers=self.optimizers, rng=rng,
                             ema=bool(self.ema and self.ema.decay))

  @functools.cached_property
  def init_inputs(self) -> dict:
    """Arguments of a new run's `init_state` (jit arguments, not constants): the network
    (and trained conditioner) a fine-tuning run starts from (config.init_from, a converted
    directory). Read when first asked for: a resumed run never reads them."""
    if not self.config.get("init_from"):
      return {}
    return {"pretrained": self._pretrained(self.config.init_from)}

  def _pretrained(self, directory: str) -> dict:
    """{'network', and 'conditioner' where one trains}: parameters from `directory`."""
    from ldm_jax.convert import export  # pylint: disable=import-outside-toplevel
    from ldm_jax.ldm import first_stage  # pylint: disable=import-outside-toplevel
    directory = os.path.expanduser(directory)
    expected = self.model.param_shapes()
    parts = {}
    for part in ("network", "conditioner"):
      if part not in expected:
        continue
      loaded = export.read(directory, part)
      first_stage.check_shapes(expected[part], loaded, directory, part)
      parts[part] = jax.tree.map(np.asarray, loaded)
    return parts

  def sampling_params(self, state: TrainState):
    """EMA parameters when the run keeps them, else the trained ones."""
    return (state.ema_params or state.params)["model"]

  # --- steps -------------------------------------------------------------------------------
  def train_step(self, state: TrainState, batch, consts):
    keys = {k: state.step_key(k) for k in model_lib.TRAIN_KEYS}
    inputs = self.model.loss_inputs(consts.get("first_stage"), batch, keys, train=True)

    def loss_fn(params):  # Differentiated in the trained parameters only.
      per_example, mse = self.model.loss_from_inputs(
          self.model.with_frozen(params, consts.get("frozen")), batch, inputs,
          dropout_key=keys["network_dropout"])
      return per_example.mean(), {"loss": per_example.mean(), "mse": mse.mean()}

    params = state.params["model"]
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = self.optimizers["model"].update(grads, state.opt_state["model"],
                                                          params)
    new_params = {"model": optax.apply_updates(params, updates)}
    new_state = state.replace(params=new_params, opt_state={"model": opt_state})
    extra = {}
    if state.ema_params is not None:
      decay = ema_decay(self.ema, state.step + 1)
      new_state = new_state.replace(ema_params=state_lib.update_ema(
          state.ema_params, new_params, decay))
      extra["ema_decay"] = decay
    finite = state_lib.all_finite(grads, metrics)
    metrics = {**metrics, **extra, "grad_norm": optax.tree_utils.tree_norm(grads),
               "kept_conditions": inputs["keep"].mean(),
               "learning_rate": optim.current_learning_rate(self.config.optimizer,
                                                            self.config.num_steps, state.step),
               "finite": finite.astype(jnp.float32)}
    return state_lib.keep_if(finite, new_state, state), metrics

  def eval_step(self, state: TrainState, batch, consts):
    """Loss of the sampling (EMA) parameters at timesteps spread evenly over the batch,
    with fixed noise: comparable from one evaluation to the next."""
    key = jax.random.key(self.config.seed + 2)
    keys = {k: jax.random.fold_in(key, i) for i, k in enumerate(("eps", "mask"))}
    params = self.model.with_frozen(self.sampling_params(state), consts.get("frozen"))
    per_example, mse, _ = self.model.loss(params, consts.get("first_stage"), batch, keys,
                                          train=False)
    keep = batch["mask"] > 0  # Padding examples of the last batch count for nothing.
    return {"loss": clu_metrics.Average.from_model_output(per_example, mask=keep),
            "mse": clu_metrics.Average.from_model_output(mse, mask=keep)}

  # --- samples -----------------------------------------------------------------------------
  def sample_images_fn(self):
    """jit(fn(params, first_stage_params, fields, key, count) -> images [-1, 1]): `fields`
    holds `label` / `tokens` / the concatenation's inputs (`LatentDiffusion.condition`) for
    `count` samples; `config.sampling` sets sampler, steps and guidance."""
    if self._grid_fn is None:
      def draw(params, fs_params, fields, key, count):
        return self.model.sample_with(params, fs_params, fields, key, count,
                                      self.config.sampling)

      self._grid_fn = jax.jit(draw, static_argnums=4)
    return self._grid_fn

  def sample_grid(self, state: TrainState, batch: dict | None, consts=None) -> np.ndarray:
    """An HWC uint8 grid: one row per class / prompt, or condition / sample / truth rows."""
    consts = self.constants if consts is None else consts
    if batch is not None:
      batch = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
               for k, v in batch.items()}
    key = jax.random.key(self.config.seed + 3)
    k_fields, k_draw = jax.random.split(key)
    fields, count, columns = self.cond.grid(self.config.sampling, batch, k_fields)
    params = self.model.with_frozen(self.sampling_params(state), consts.get("frozen"))
    images = np.asarray(self.sample_images_fn()(
        params, consts.get("first_stage"), fields, k_draw, count))
    if self.cond.CONCAT:
      truth = batch["image"][:count]
      rows = [self.cond.show(fields, truth), images, truth]
      images = np.concatenate([np.asarray(r, np.float32) for r in rows])
    return visualize.make_grid(images, columns=columns)

  def image_grids(self, state: TrainState, batch):
    return {"samples": self.sample_grid(state, batch)[None]}

  def finalize(self, state: TrainState, config, mesh, abandon=None):
    """Nothing beyond the loop's last evaluation and sample grid."""
    del state, config, mesh, abandon
    return {}
