"""benchmark.py's measurements: jax_steps (ours), torch_steps (diffusers), measure, run."""
