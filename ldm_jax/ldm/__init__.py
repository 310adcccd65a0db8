"""Latent diffusion glue: the frozen first stage, conditioning, sampling, latent caches."""
