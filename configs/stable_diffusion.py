"""Stable Diffusion 1.x / 2.x and LDM txt2img: what a converted checkpoint samples with, and
the recipe that fine-tunes one. See ldm_jax/recipes/stable_diffusion.py for the variants.

  python -m ldm_jax.ldm.latent_cache \
      --config=configs/stable_diffusion.py:pipeline=SD15,folder=/data/captioned --out=CACHE
  python train.py --config=configs/stable_diffusion.py:pipeline=SD15,folder=/data/captioned \
      --workdir=RUN --config.data.name=<printed cache> --config.data.latent_key=moments
"""

from ldm_jax.recipes.stable_diffusion import get_config  # pylint: disable=unused-import
