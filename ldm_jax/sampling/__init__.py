"""Sampling from trained or imported LDMs: `load(...)` -> `Sampler.sample(...)` (sampler.py);
files in and out for sample.py (files.py)."""

from ldm_jax.sampling.sampler import Sampler, Samples, load  # noqa: F401
