"""Pieces every experiment config shares: see ldm_jax/recipes/common.py (they live in the
package, which builds configs too), re-exported here for the files in configs/."""

from ldm_jax.recipes.common import *  # pylint: disable=wildcard-import,unused-wildcard-import
