"""Weight import from PyTorch checkpoints (diffusers, CompVis / Stable Diffusion)."""
