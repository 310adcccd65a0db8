"""The environment for a test's subprocess: the test run's own (XLA flags, compilation cache)
without its 8-device setting, which a worker replaces with the count it needs."""

import os


def environment(**extra: str) -> dict[str, str]:
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
  env["XLA_FLAGS"] = " ".join(flag for flag in env.get("XLA_FLAGS", "").split()
                              if not flag.startswith("--xla_force_host_platform_device_count"))
  return env


def set_device_count(count: int) -> None:
  """In a worker, before JAX starts: `count` CPU devices, the other inherited flags kept."""
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={count}").strip()
