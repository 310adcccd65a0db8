"""`ldm_jax.diffusion` stays independent of networks and training (its modules' imports)."""

import ast
import pathlib

import ldm_jax.diffusion


def test_diffusion_imports_neither_models_nor_training():
  folder = pathlib.Path(ldm_jax.diffusion.__file__).parent
  offenders = []
  for path in sorted(folder.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
          [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      offenders += [f"{path.name}: {n}" for n in names
                    if n.startswith(("ldm_jax.models", "ldm_jax.training", "ldm_jax.nn"))]
  assert len(list(folder.glob("*.py"))) >= 4 and not offenders, offenders
