"""conditioning.type='none': an unconditional model."""

from ldm_jax.ldm.modes import base


class Unconditional(base.Mode):
  NAME = "none"
  CACHEABLE = True

  def read(self, given: dict, image_size: int) -> base.Request:
    return base.Request({}, [None], image_size, "data.image_size")

  def grid(self, sampling, batch, key):
    del batch, key
    return {}, int(sampling.per_row) * int(sampling.max_rows), int(sampling.per_row)
