"""The package layers: a package imports only from lower layers (and itself); no cycles.

Every import counts, also those inside functions (they hide a cycle, they do not break it).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "ldm_jax"

# Lowest first. Packages of one layer do not import each other.
LAYERS = (
    ("nn", "parallel", "visualize", "recipes"),
    ("models", "data"),
    ("diffusion",),
    ("convert",),  # A pipeline's conversion checks its schedule against ours.
    ("metrics",),  # LPIPS reads torch weight files through convert.
    ("ldm",),
    ("sampling",),
    ("eval",),  # Draws samples of a run to measure them (fid --samples=RUN).
    ("training",),  # Measures samples during training (config.evals).
    ("benchmark",),
)
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
# Stricter than its layer: diffusion math sees no networks, data or training (a model is a
# `model_fn(x, t)` closure).
IMPORTS_NOTHING = ("diffusion",)


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """The ldm_jax modules `path` imports, anywhere in the file."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("ldm_jax"))
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
        node.module.startswith("ldm_jax")):
      for alias in node.names:  # `from ldm_jax.x import y`: y may be a module or a name.
        candidate = f"{node.module}.{alias.name}"
        found.add(candidate if _exists(candidate) else node.module)
  return found


def _exists(module: str) -> bool:
  path = ROOT.parent.joinpath(*module.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
  return {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def _package(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def test_every_package_has_a_layer():
  packages = {_package(m) for m in _graph()} - {None}
  assert packages <= set(LAYER_OF), (
      f"packages {sorted(packages - set(LAYER_OF))} have no layer in tests/layering_test.py")


def test_packages_import_only_lower_layers():
  wrong = []
  for module, imports in sorted(_graph().items()):
    package = _package(module)
    if package is None:
      continue
    for target in sorted(imports):
      other = _package(target)
      if other is None or other == package:
        continue
      if LAYER_OF[other] >= LAYER_OF[package]:
        wrong.append(f"{module} imports {target} (layer {LAYER_OF[other]} >= "
                     f"{LAYER_OF[package]})")
  assert not wrong, "\n".join(wrong)


def test_diffusion_imports_no_other_package():
  graph = _graph()
  assert any(_package(m) == "diffusion" for m in graph)
  wrong = [f"{m} imports {t}" for m, imports in sorted(graph.items())
           if _package(m) in IMPORTS_NOTHING for t in sorted(imports)
           if _package(t) != _package(m)]
  assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
  graph = _graph()
  state, cycles = {}, []

  def visit(module, path):
    state[module] = "open"
    for target in sorted(graph.get(module, ())):
      if state.get(target) == "open":
        cycles.append(" -> ".join(path[path.index(target):] + [target]))
      elif target not in state and target in graph:
        visit(target, path + [target])
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("source, expected", [
    ("from ldm_jax.training import stages\n", {"ldm_jax.training.stages"}),
    ("def f():\n  from ldm_jax.ldm import model\n", {"ldm_jax.ldm.model"}),
    ("import ldm_jax.diffusion.samplers\n", {"ldm_jax.diffusion.samplers"}),
    ("from ldm_jax.diffusion.process import PREDICTIONS\n", {"ldm_jax.diffusion.process"}),
])
def test_imports_are_found_at_any_depth(tmp_path, source, expected):
  path = tmp_path / "x.py"
  path.write_text(source)
  assert _imports(path) == expected
