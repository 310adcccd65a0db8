"""Config building blocks the library itself needs: the shared pieces of every experiment
config (common.py), the known architectures (architectures.py) and the text-to-image
families a converted checkpoint is sampled and fine-tuned with (stable_diffusion.py).

They live in the package because `python -m ldm_jax.convert` writes whole configs from them
wherever ldm_jax is installed; `configs/common.py`, `configs/architectures.py` and
`configs/stable_diffusion.py` (the files users pass to --config) re-export them.
"""
