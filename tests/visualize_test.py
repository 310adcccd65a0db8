"""Image grids."""

import numpy as np

from ldm_jax import visualize


def test_grid_layout_and_range():
  images = np.stack([np.full((2, 3, 1), v, np.float32) for v in (-1.0, 0.0, 1.0, 2.0, -3.0)])
  grid = visualize.make_grid(images, columns=2, padding=1)
  assert grid.shape == (3 * 4, 2 * 5, 1) and grid.dtype == np.uint8
  assert grid[1, 1, 0] == 0 and grid[1, 6, 0] == 128 and grid[5, 1, 0] == 255
  assert grid[5, 6, 0] == 255 and grid[9, 1, 0] == 0  # Clipped to [-1, 1].
  assert grid[9, 6, 0] == 0  # The empty sixth tile.
