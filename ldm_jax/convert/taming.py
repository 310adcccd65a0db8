"""taming-transformers' PatchGAN discriminator state dict -> our (params, batch_stats).

Keys map by name: `main.{i}.weight` -> `main_{i}/kernel` (OIHW -> HWIO) for convs and
`main_{i}/scale` for BatchNorm, `main.{i}.bias` -> `main_{i}/bias`, and the BatchNorm buffers
`main.{i}.running_mean` / `running_var` -> batch_stats `main_{i}/mean` / `var`. The buffers
`main.{i}.num_batches_tracked` of BatchNorm layers carry nothing we use (they only matter for
momentum=None) and are dropped; every other key must fit, and every parameter must be filled.
"""

import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.convert import torch_weights
from ldm_jax.models.discriminator import NLayerDiscriminator

# Our batch_stats leaf -> the BatchNorm2d buffer holding it.
_BUFFERS = {"mean": "running_mean", "var": "running_var"}


def infer_discriminator(state_dict: Mapping[str, Any], *, prefix: str = ""
                        ) -> NLayerDiscriminator:
  """The NLayerDiscriminator (ndf, n_layers, input_nc) that a taming state dict describes."""
  first = f"{prefix}main.0.weight"
  if first not in state_dict:
    raise torch_weights.WeightMismatchError(
        f"No key {first!r}: not a taming NLayerDiscriminator state dict (keys start with "
        f"{sorted(state_dict)[:3]}...).")
  shape = tuple(np.shape(state_dict[first]))
  if len(shape) != 4:
    raise torch_weights.WeightMismatchError(f"{first} has shape {shape}; expected a conv "
                                            "weight (out, in, 4, 4).")
  pattern = re.compile(rf"^{re.escape(prefix)}main\.\d+\.weight$")
  convs = [k for k, v in state_dict.items() if pattern.match(k) and len(np.shape(v)) == 4]
  # Convs: the first, n_layers - 1 stride-2 ones, one stride-1 one and the output conv; with
  # three convs the middle one's width tells n_layers=0 (ndf) from n_layers=1 (2 * ndf).
  n_layers = len(convs) - 2
  middle = f"{prefix}main.2.weight"
  if n_layers == 1 and middle in state_dict and np.shape(state_dict[middle])[0] == shape[0]:
    n_layers = 0
  return NLayerDiscriminator(ndf=shape[0], n_layers=n_layers, input_nc=shape[1])


def from_taming(state_dict: Mapping[str, Any], model: NLayerDiscriminator | None = None, *,
                prefix: str = "") -> tuple[dict, dict]:
  """Converts taming's `NLayerDiscriminator.state_dict()` to `(params, batch_stats)`.

  Args:
    state_dict: name -> array or torch tensor.
    model: the module to fill; None infers it from the weights' shapes
      (`infer_discriminator`). `model.input_nc` must be set.
    prefix: only keys starting with it are read, with it removed (e.g.
      'loss.discriminator.' in a CompVis autoencoder checkpoint).

  Raises:
    torch_weights.WeightMismatchError: naming every unexpected, mis-shaped or missing key.
  """
  model = infer_discriminator(state_dict, prefix=prefix) if model is None else model
  if model.input_nc is None:
    raise ValueError("from_taming needs model.input_nc to know the first conv's shape.")
  side = 2 ** (max(model.n_layers, 1) + 2)
  x = jax.ShapeDtypeStruct((1, side, side, model.input_nc), jnp.float32)
  target = jax.eval_shape(model.init, jax.random.key(0), x)
  params, stats = flax.core.unfreeze(target["params"]), flax.core.unfreeze(
      target.get("batch_stats", {}))
  # One target holding both, under the names the torch module uses, so that one strict
  # pass reports every problem at once with the checkpoint's own key names.
  merged = flax.traverse_util.flatten_dict(params)
  for (module, leaf), value in flax.traverse_util.flatten_dict(stats).items():
    merged[(module, _BUFFERS[leaf])] = value
  ignore = tuple(rf"^{re.escape(prefix)}{module.replace('_', '.')}\.num_batches_tracked$"
                 for module in stats)
  filled = torch_weights.to_flax(state_dict, flax.traverse_util.unflatten_dict(merged),
                                 prefix=prefix, ignore=ignore)
  # Copies: numpy views of torch tensors would change with the module's next train step.
  flat = {path: np.array(v) for path, v in flax.traverse_util.flatten_dict(filled).items()}
  back = {buffer: leaf for leaf, buffer in _BUFFERS.items()}
  new_params = {path: v for path, v in flat.items() if path[-1] not in back}
  new_stats = {(path[0], back[path[-1]]): v for path, v in flat.items() if path[-1] in back}
  return (flax.traverse_util.unflatten_dict(new_params),
          flax.traverse_util.unflatten_dict(new_stats))
