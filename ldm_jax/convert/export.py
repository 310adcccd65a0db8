"""Converted weights on disk: one Orbax checkpoint per part, plus the config that built it.

Layout of DIR: `config.json` (the model config blocks), and `network/`, `autoencoder/`,
`conditioner/` (Orbax StandardCheckpointer trees of parameters). `read(DIR, 'network')` gives
the tree back (directories written before `network` existed name it `unet/`).
"""

import json
import os

import ml_collections
import orbax.checkpoint as ocp


def check_new(directory: str) -> str:
  """The absolute path of `directory`, refused when it exists and holds anything."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
    raise FileExistsError(f"--out={directory} exists and is not empty; converted weights are "
                          f"never written over. Choose a new directory.")
  return directory


def write(directory: str, parts: dict[str, dict], config: ml_collections.ConfigDict) -> None:
  """Writes `parts` (name -> params) and `config`; refuses to touch an existing directory."""
  directory = check_new(directory)
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    for name, params in parts.items():
      checkpointer.save(os.path.join(directory, name), params)
  with open(os.path.join(directory, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=1))


def read(directory: str, part: str) -> dict:
  path = os.path.join(os.path.abspath(directory), part)
  if not os.path.isdir(path):
    available = sorted(p for p in os.listdir(directory) if p != "config.json") if \
        os.path.isdir(directory) else []
    raise FileNotFoundError(f"No converted '{part}' weights in {directory} (found "
                            f"{available}).")
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path)


def read_config(directory: str) -> ml_collections.ConfigDict:
  with open(os.path.join(directory, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))
