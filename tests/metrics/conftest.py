"""Fixtures of the metrics tests: random FID Inception weights in PyTorch's layout and ours."""

import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest

from tests import references
from tests import subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _random_inception_file(path: str) -> None:
  """torch-fidelity's network with its layers' own random init, BatchNorm statistics from a
  pass over random images (so every layer's activations stay near unit scale) and random
  affine terms; saved as a plain state dict like pt_inception-2015-12-05-6726825d.pth."""
  torch = references.require("torch")
  references.require_torchvision()
  fe = references.require("torch_fidelity.feature_extractor_inceptionv3")
  cls = fe.FeatureExtractorInceptionV3
  torch.manual_seed(0)  # The layers' own init draws from the global generator.
  # Its constructor loads the given weights; skipped here, the layers keep their init.
  with mock.patch.object(torch, "load", lambda *a, **k: None), \
      mock.patch.object(cls, "load_state_dict", lambda self, state: None):
    model = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path="none")
  generator = torch.Generator().manual_seed(0)
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.momentum = None  # A cumulative average: one pass sets the statistics.
      module.reset_running_stats()
  model.train()
  with torch.no_grad():
    model((torch.rand(4, 3, 299, 299, generator=generator) * 255).to(torch.uint8))
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5, generator=generator)
        module.bias.normal_(0.0, 0.2, generator=generator)
    # Logits of a few units (pool3 is in the hundreds here), so that softmax is not one-hot.
    model.fc.weight.normal_(0.0, 1e-4, generator=generator)
  state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
  torch.save(state, path)


@pytest.fixture(scope="session")
def inception_weights(shared):
  """(PyTorch file, our .npz converted by the CLI), made once per test session."""

  def make(folder):
    os.makedirs(folder, exist_ok=True)
    _random_inception_file(os.path.join(folder, "pt_inception_random.pth"))
    done = subprocess.run([sys.executable, "-m", "ldm_jax.eval.inception_convert",
                           f"--weights={folder}/pt_inception_random.pth",
                           f"--out={folder}/inception.npz"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=subprocesses.environment(), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "does not start with 6726825d" in done.stdout

  folder = shared("inception_weights", make)
  return f"{folder}/pt_inception_random.pth", f"{folder}/inception.npz"


def random_images(size: int, count: int = 2, seed: int | None = None) -> np.ndarray:
  """uint8 [count, size, size, 3] test images."""
  rng = np.random.default_rng(size if seed is None else seed)
  # Smooth images with detail: a random low-resolution field, upsampled, plus noise.
  low = rng.uniform(0, 255, (count, 8, 8, 3))
  field = np.repeat(np.repeat(low, -(-size // 8), axis=1), -(-size // 8), axis=2)
  noise = rng.normal(0, 20, (count, size, size, 3))
  return np.clip(field[:, :size, :size] + noise, 0, 255).astype(np.uint8)
