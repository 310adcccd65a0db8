"""The environment for a test's subprocess: the test run's own (XLA flags, compilation cache)
without its 8-device setting, which a worker replaces with the count it needs."""

import os

_DEVICE_COUNT = "--xla_force_host_platform_device_count"


def environment(*, drop_flags: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
  """os.environ with `extra`, less the device count and the XLA flags named in `drop_flags`
  (e.g. '--xla_backend_optimization_level': the process compiles at XLA's default)."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
  dropped = (_DEVICE_COUNT, *drop_flags)
  env["XLA_FLAGS"] = " ".join(flag for flag in env.get("XLA_FLAGS", "").split()
                              if not flag.startswith(dropped))
  return env


def set_device_count(count: int) -> None:
  """In a worker, before JAX starts: `count` CPU devices, the other inherited flags kept."""
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" {_DEVICE_COUNT}={count}").strip()
