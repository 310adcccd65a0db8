"""Shared test setup: 8 virtual CPU devices, quiet TF, offline datasets prepared once."""

import os

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Set before JAX initialises its backend, in the environment so that the subprocesses tests
# start (train.py, sample.py, multi-process workers) inherit them:
# * 8 CPU devices for the sharding tests (workers that need another count replace it);
# * LLVM optimisation level 0 for XLA's CPU code: the tests' programs are tiny and run for
#   milliseconds, but compiling them is most of the suite's time, and most of a compile is
#   LLVM's optimisation passes (a tiny autoencoder's init 20 s -> 4.6 s, its train step
#   17 s -> 7 s, measured on 2 cores). Results differ from the default level by rounding
#   only (PLMS vs diffusers over 50 steps: 8.6e-6 -> 1.1e-5), which the float32 parity
#   bounds allow several times over;
# * a persistent compilation cache (fresh in a clean clone): tests that train rebuild the
#   same steps several times (resume, fallback, shared tiny runs), compiled once per run.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(_ROOT, ".pytest_cache", "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# The original CompVis/Stability `ldm` code, a reference for checkpoint imports. `make test`
# installs it here (pip --target, without its dependencies) to keep it out of the venv.
_COMPVIS_REFERENCE = os.path.join(_ROOT, ".venv", "compvis-reference")
if os.path.isdir(_COMPVIS_REFERENCE):
  sys.path.append(_COMPVIS_REFERENCE)

from tests import references  # pylint: disable=g-import-not-at-top,wrong-import-position

# torchvision (there too) imports in every test process, for whichever package looks for it
# (pytorch-fid, torch-fidelity, diffusers, transformers); see references.py.
references.allow_torchvision()


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


# Under CI a test whose setup and call take longer than this fails, so that the suite (20
# minutes on 2 cores) cannot drift back: share the work (`shared`, `tiny_run`) or shrink it.
TEST_BUDGET_SECONDS = 120.0
_SETUP_SECONDS = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
  """Slow tests first (in their file order), so that the two workers do not end on one long
  test while the other idles. The tests that start several JAX processes share
  xdist_group('processes') (`make test` runs --dist loadgroup): one worker runs them one
  after the other, as two of them at once (six processes on two cores) slow each past its
  budget."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _under_ci() -> bool:
  return os.environ.get("CI", "").lower() not in ("", "0", "false")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
  report = (yield).get_result()
  if report.when == "setup":
    item.stash[_SETUP_SECONDS] = report.duration
  elif report.when == "call" and report.passed and _under_ci():
    setup = item.stash.get(_SETUP_SECONDS, 0.0)
    if setup + report.duration > TEST_BUDGET_SECONDS:
      report.outcome = "failed"
      report.longrepr = (
          f"{item.nodeid} took {setup + report.duration:.0f} s (setup {setup:.0f} s, call "
          f"{report.duration:.0f} s), over the {TEST_BUDGET_SECONDS:.0f} s budget of one test "
          f"under CI (tests/conftest.py): share its work with other tests or shrink it.")


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
def shared(request, tmp_path_factory):
  """fn(name, make) -> path: `make(path)` runs once per test session for `name` (the xdist
  workers share its result through a file lock), for results several tests read."""
  import filelock  # pylint: disable=g-import-not-at-top
  root = _shared_root(request, tmp_path_factory) / "shared"
  root.mkdir(exist_ok=True)

  def get(name: str, make) -> str:
    path, done = root / name, root / f"{name}.done"
    with filelock.FileLock(str(root / f"{name}.lock")):
      if not done.exists():
        make(str(path))
        done.touch()
    return str(path)

  return get


@pytest.fixture(scope="session")
def tiny_run(data_dir, shared):
  """fn('config[:variant]') -> the workdir of that config trained for one step through the
  real loop, with `result.json` (step, skipped, eval loss). Each is trained once per test
  session and shared by every test (and xdist worker) that asks for it."""

  def train(spec: str) -> str:
    import importlib  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    import pathlib  # pylint: disable=g-import-not-at-top
    from ldm_jax.training import loop  # pylint: disable=g-import-not-at-top

    def make(workdir):
      module, _, arg = spec.partition(":")
      config = importlib.import_module(f"configs.{module}").get_config(arg)
      config.data.data_dir = data_dir
      config.num_steps = 1
      state, metrics = loop.train_and_evaluate(config, workdir)
      (pathlib.Path(workdir) / "result.json").write_text(json.dumps({
          "step": int(state.step), "skipped": int(state.skipped),
          "eval_loss": float(metrics["eval/loss"])}))

    name = "tiny_run_" + spec.replace(":", "_").replace(",", "_").replace("=", "-")
    return shared(name, make)

  return train
