"""Latent Diffusion Models in JAX/Flax."""
