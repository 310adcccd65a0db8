"""Shared test setup: 8 virtual CPU devices, quiet TF, offline datasets prepared once."""

import os

# Must happen before JAX initialises its backend: 8 CPU devices for the sharding tests.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# Tests that train rebuild the same step several times (resume, fallback): a persistent
# compilation cache compiles each one once per run. Fresh in a clean clone.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax-compilation-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# The original CompVis/Stability `ldm` code, a reference for checkpoint imports. `make test`
# installs it here (pip --target, without its dependencies) to keep it out of the venv.
_COMPVIS_REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), ".venv", "compvis-reference")
if os.path.isdir(_COMPVIS_REFERENCE):
  sys.path.append(_COMPVIS_REFERENCE)


def _shared_root(request, tmp_path_factory):
  """A folder shared by the xdist workers of one run (each worker's own basetemp otherwise)."""
  root = tmp_path_factory.getbasetemp()
  return root.parent if hasattr(request.config, "workerinput") else root


@pytest.fixture(scope="session")
def data_dir(request, tmp_path_factory):
  """A TFDS data_dir with the offline datasets the tests read, prepared once per run (the
  xdist workers share it through a file lock)."""
  import filelock  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  from ldm_jax.data import sources  # pylint: disable=g-import-not-at-top
  path = _shared_root(request, tmp_path_factory) / "tfds"
  with filelock.FileLock(f"{path}.lock"):
    for name in ("digits", "photo_patches/64"):
      sources.load_builder(common.data_config(name=name, data_dir=str(path)))
  return str(path)


def pytest_sessionfinish(session, exitstatus):
  """A run that executes no test fails: a green CI must mean tests ran and passed."""
  reporter = session.config.pluginmanager.get_plugin("terminalreporter")
  if reporter is None or exitstatus != 0:
    return
  if hasattr(session.config, "workerinput"):  # An xdist worker: the controller decides.
    return
  if not reporter.stats.get("passed"):
    reporter.write_line("ERROR: no test passed (none collected, or all skipped).", red=True)
    session.exitstatus = 1


@pytest.fixture(scope="session")
def tiny_run(request, data_dir, tmp_path_factory):
  """fn('config[:variant]') -> the workdir of that config trained for one step through the
  real loop, with `result.json` (step, skipped, eval loss). Each is trained once per test
  session: xdist workers share the runs through a file lock."""
  import filelock  # pylint: disable=g-import-not-at-top
  root = _shared_root(request, tmp_path_factory) / "tiny_runs"
  root.mkdir(exist_ok=True)

  def train(spec: str) -> str:
    import importlib  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    from ldm_jax.training import loop  # pylint: disable=g-import-not-at-top
    name = spec.replace(":", "_").replace(",", "_").replace("=", "-")
    workdir = root / name
    done = root / f"{name}.done"
    with filelock.FileLock(str(root / f"{name}.lock")):
      if not done.exists():
        module, _, arg = spec.partition(":")
        config = importlib.import_module(f"configs.{module}").get_config(arg)
        config.data.data_dir = data_dir
        config.num_steps = 1
        state, metrics = loop.train_and_evaluate(config, str(workdir))
        (workdir / "result.json").write_text(json.dumps({
            "step": int(state.step), "skipped": int(state.skipped),
            "eval_loss": float(metrics["eval/loss"])}))
        done.touch()
    return str(workdir)

  return train
