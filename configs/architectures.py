"""The known LDM / Stable Diffusion architectures as model config blocks: see
ldm_jax/recipes/architectures.py. As a config file it selects one, e.g.
`--config=configs/architectures.py:sd_v1_unet` (a `network`, `autoencoder` or `conditioner`
block)."""

from ldm_jax.recipes.architectures import *  # pylint: disable=wildcard-import,unused-wildcard-import
from ldm_jax.recipes.architectures import _autoencoder  # pylint: disable=unused-import
from ldm_jax.recipes.architectures import _unet  # pylint: disable=unused-import
