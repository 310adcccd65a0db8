"""Rematerialisation (gradient checkpointing) by name: the `remat` field of a network or
autoencoder block. Each remat-wrapped block (a ResBlock, an attention block, a transformer
layer) keeps only what the policy saves for the backward pass and recomputes the rest.

  False / 'none'     no remat: every activation is kept (fastest, most memory);
  True / 'full'      nothing inside a block is kept (least memory, one more forward);
  'dots'             matrix products' and convolutions' outputs are kept, the cheap
                     element-wise work (norms, activations, softmax) is recomputed;
  'dots_no_batch'    only products without batch dimensions are kept (projections and
                     convolutions, not attention's q k^T / p v).
"""

import flax.linen as nn
import jax

POLICIES = {
    "full": None,  # nn.remat's default: save nothing.
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
NAMES = ("none", *POLICIES)


def policy_name(remat) -> str | None:
  """The policy `remat` names (None: no remat); raises on an unknown value."""
  if isinstance(remat, str):  # Command lines write booleans as words.
    remat = {"false": False, "true": True}.get(remat.lower(), remat)
  if remat is None or remat is False or remat == "none":
    return None
  if remat is True:
    return "full"
  if isinstance(remat, str) and remat in POLICIES:
    return remat
  raise ValueError(f"remat={remat!r}: expected False/True or one of {NAMES}.")


def wrap(module_cls, remat, **kwargs):
  """`module_cls` under the named remat policy (itself when none); kwargs go to nn.remat."""
  name = policy_name(remat)
  if name is None:
    return module_cls
  return nn.remat(module_cls, policy=POLICIES[name], **kwargs)
