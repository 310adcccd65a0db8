"""Diffusion math as pure functions: schedules, the forward process, losses, samplers.

Nothing here imports networks or training code: a model is a `model_fn(x, t)` closure.
"""
