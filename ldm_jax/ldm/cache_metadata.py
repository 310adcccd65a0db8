"""A latent cache's record of the weights that made it (`first_stage.json` beside the TFDS
files, written by ldm_jax/ldm/latent_cache.py) and the check that a run uses the same ones.
Kept apart from latent_cache.py so that training from a cache needs no TensorFlow here.
"""

import json
import os

from ldm_jax.ldm import first_stage as first_stage_lib

METADATA = "first_stage.json"


def check(directory: str, fs, params, text=None) -> None:
  """Raises unless the cache in `directory` was made by these first-stage parameters (and,
  `text` a frozen_text mode, by its text encoder and padding)."""
  path = os.path.join(os.path.abspath(os.path.expanduser(directory)), METADATA)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data.name={directory!r} has no {METADATA}: expected a "
                            f"directory written by `python -m ldm_jax.ldm.latent_cache`.")
  with open(path) as f:
    metadata = json.load(f)
  if metadata["fingerprint"] != first_stage_lib.fingerprint(params):
    raise ValueError(f"The latent cache {directory} was encoded by {metadata['first_stage']},"
                     f" not by this run's first stage ({fs.description}): its parameters "
                     f"differ. Rebuild the cache.")
  if text is None:
    return
  stored = metadata.get("text_encoder")
  if stored is None:
    raise ValueError(f"The latent cache {directory} holds no caption contexts; "
                     f"conditioning.type='frozen_text' trains from them. Rebuild it with "
                     f"this config.")
  if stored["fingerprint"] != first_stage_lib.fingerprint(text.frozen_params) or \
      stored["pad"] != int(text.tokenizer.pad_id):
    raise ValueError(f"The latent cache {directory}'s contexts were made by another text "
                     f"encoder or padding (tokenizer {stored['tokenizer']}, pad "
                     f"{stored['pad']}) than this run's "
                     f"({text.block.get('tokenizer') or 'bytes'}, pad "
                     f"{int(text.tokenizer.pad_id)}). Rebuild the cache.")
