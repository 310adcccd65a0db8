"""TFDS builders that ship with ldm_jax and prepare offline (no downloads)."""
