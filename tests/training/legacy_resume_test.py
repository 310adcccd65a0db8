"""A run saved before `config.network` (its UNet under `config.unet` and params['unet'])
resumes with today's code: the old step is restored under the new names, training goes on
from its weights, and the next save uses the new layout."""

import os
import shutil

import numpy as np
import pytest

from configs import digits_ldm
from ldm_jax.ldm import run
from ldm_jax.training import checkpoint
from ldm_jax.training import loop

LEGACY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "legacy_run")


@pytest.mark.slow
def test_a_run_saved_with_the_unet_layout_resumes(data_dir, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(LEGACY, workdir)
  # The config that wrote it (tests/data/legacy_run/README.md), in its old layout: a user's
  # own config file may still say `config.unet`.
  config = digits_ldm.get_config("tiny,cond=caption")
  with config.unlocked():
    config.unet = config.network
    del config.unet["type"]
    del config["network"]
  config.data.data_dir = data_dir
  config.unet.channel_mult = (1,)
  config.unet.attention_resolutions = (1,)
  config.num_steps = 2
  state, _ = loop.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 2 and set(state.params["model"]) == {"network", "conditioner"}
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]  # Nothing set aside.
  _, old, old_config, _ = run.load_run(str(workdir), step=1, use_ema=False)
  _, new, new_config, _ = run.load_run(str(workdir), step=2, use_ema=False)
  assert "unet" not in old_config
  # It resumed although its execution settings are older defaults (remat=False,
  # attention_impl='xla'; today 'none' and 'auto'): they do not shape the parameters.
  structural = lambda c: {k: v for k, v in c.network.to_dict().items()
                          if k not in checkpoint.EXECUTION_ONLY}
  assert structural(old_config) == structural(new_config)
  assert (old_config.network.remat, old_config.network.attention_impl) == (False, "xla")
  assert (new_config.network.remat, new_config.network.attention_impl) == ("none", "auto")
  # One Adam step (learning rate 1e-5 at step 1 of the warm-up) from the saved weights: a
  # fresh init would differ by the scale of the weights.
  for key in ("network", "conditioner"):
    a = np.concatenate([np.ravel(x) for x in _leaves(old[key])])
    b = np.concatenate([np.ravel(x) for x in _leaves(new[key])])
    assert 0 < np.abs(a - b).max() < 1e-3, key


def _leaves(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
