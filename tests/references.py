"""Imports of what the tests compare against (torch, diffusers, the CompVis/taming/lpips code
that `make install` puts in .venv/compvis-reference, OpenCV, ...).

A missing reference skips its tests on a developer's machine, but fails them under CI
(CI=true), where the parity they check must actually be shown.
"""

import importlib
import os

import pytest


# The one reference no package registry carries: CompVis latent-diffusion's
# `ldm.modules.losses` (LPIPSWithDiscriminator); stable-diffusion-sdkit ships Stability's
# SD2 tree, which dropped it. Its tests skip, under CI too, saying so. They passed against
# latent-diffusion a506df5 (its ldm/modules/losses put beside the installed `ldm`):
# relative errors <= 8.3e-7 against the 1e-5 bound.
NOT_IN_ANY_REGISTRY = ("ldm.modules.losses",)


def missing(what: str, error: Exception | str) -> None:
  """Skips (or, under CI, fails) the calling test or module: `what` is not available."""
  if what.startswith(NOT_IN_ANY_REGISTRY):
    pytest.skip(f"{what} is in no package registry (CompVis latent-diffusion only); put its "
                f"ldm/modules/losses beside the installed `ldm` to run this",
                allow_module_level=True)
  message = f"{what} is not available ({error}); `make install` installs every reference"
  if os.environ.get("CI", "").lower() not in ("", "0", "false"):
    pytest.fail(f"{message}. Under CI a missing reference is a failure.", pytrace=False)
  pytest.skip(message, allow_module_level=True)


def require(module: str):
  """`module`, imported; see `missing` when it cannot be."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    missing(module, e)


def allow_torchvision() -> None:
  """Lets `import torchvision` (0.28, the release for torch 2.13, installed beside the
  references) succeed. PyPI's build links its compiled ops against CUDA torch; beside the CPU
  torch 2.13.0 they do not load, and the import stops where it registers shapes for them
  (`torchvision::nms does not exist`), which also breaks diffusers and transformers once they
  find it installed. The tests use only its Python model and transform code, so that
  registration module is replaced by an empty one before anything imports torchvision."""
  import sys  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  if "torchvision" not in sys.modules:
    name = "torchvision._meta_registrations"
    sys.modules.setdefault(name, types.ModuleType(name))


def require_torchvision():
  """torchvision, imported as `allow_torchvision` permits (pytorch-fid and torch-fidelity
  import it for their Inception code)."""
  allow_torchvision()
  return require("torchvision")


def write_clip_vocab(folder) -> str:
  """CLIP's vocab.json + merges.txt, as in a diffusers pipeline's `tokenizer/` folder, written
  into `folder` from the BPE merges open_clip's wheel ships, the way OpenAI's tokenizer makes
  its vocabulary: the 256 byte symbols, the same ending a word, one token per merge, then the
  two special tokens (49406, 49407)."""
  import gzip  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  open_clip = require("open_clip")
  with gzip.open(open_clip.tokenizer.default_bpe()) as f:
    lines = f.read().decode("utf-8").split("\n")
  merges = lines[1:49152 - 256 - 2 + 1]
  symbols = list(open_clip.tokenizer.bytes_to_unicode().values())
  vocab = (symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] +
           ["<|startoftext|>", "<|endoftext|>"])
  folder = str(folder)
  with open(os.path.join(folder, "vocab.json"), "w") as f:
    json.dump({t: i for i, t in enumerate(vocab)}, f)
  with open(os.path.join(folder, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
  return folder
