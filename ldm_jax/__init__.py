"""Latent Diffusion Models in JAX/Flax.

Importing the package sets one XLA flag for the CPU backend under jaxlib 0.10 (where it was
measured; XLA stops at a flag its build does not know, so other versions are left alone),
unless XLA_FLAGS names it already (then the user's value stands):
`--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT` keeps matrix
products on YNNPACK, as by default, but convolutions on XLA's own multi-threaded Eigen
kernels: jaxlib 0.10's YNNPACK convolution ran a 3x3 convolution at 64 channels on one core
of two (forward + backward 40 ms -> 23 ms at batch 16, 32x32x64; benchmarks/RESULTS.md).
Taking the products off YNNPACK too (an empty list) fails bf16 gradients under remat ("Dot
with multiple contracting dimensions is not implemented"). The flag must be set before JAX's
CPU backend starts: entry points import ldm_jax first. Other backends ignore it.
"""

import os as _os

_CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
_MEASURED_JAXLIB = "0.10."


def _set_cpu_flags() -> None:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  try:
    if not metadata.version("jaxlib").startswith(_MEASURED_JAXLIB):
      return
  except metadata.PackageNotFoundError:
    return
  flags = _os.environ.get("XLA_FLAGS", "")
  extra = [f"--{name}={value}" for name, value in _CPU_FLAGS.items() if f"--{name}" not in flags]
  if extra:
    _os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_set_cpu_flags()
