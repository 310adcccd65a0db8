"""Which objective a run trains: `config.stage` -> a stage object with pure functions.

A stage provides `batch_keys`, `prepare(batch, mesh, extra_keys)` (host side: the fields its
steps take), `constants` (frozen jit inputs), `init_state(rng)`, `train_step(state, batch)`,
`eval_step(state, batch)` ({name: clu `metrics.Average`} over the batch's examples),
`image_grids(state, batch)` and `finalize(state, config, mesh)`, and optionally `init_inputs`
(keyword arguments of a new run's `init_state`: pretrained weights, passed to the jitted
initialisation as arguments); `loop.train_and_evaluate` does the rest.
"""

import ml_collections

STAGES = ("autoencoder", "ldm")


def create(config: ml_collections.ConfigDict):
  if config.get("stage") == "autoencoder":
    from ldm_jax.training import autoencoder_stage  # pylint: disable=import-outside-toplevel
    return autoencoder_stage.AutoencoderStage(config)
  if config.get("stage") == "ldm":
    from ldm_jax.training import ldm_stage  # pylint: disable=import-outside-toplevel
    return ldm_stage.LdmStage(config)
  raise ValueError(f"stage={config.get('stage')!r}: expected one of {STAGES}.")

