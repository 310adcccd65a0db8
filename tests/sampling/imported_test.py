"""An imported CompVis-format LDM checkpoint, end to end: `python -m ldm_jax.convert` with an
LDM config, then `sampling.load(checkpoint=...)`, against diffusers running the same weights
(UNet2DConditionModel, AutoencoderKL, the class embedding) through its DDIMScheduler."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ldm_cin256
from ldm_jax.convert import compvis
from ldm_jax.convert import diffusers_configs
from ldm_jax.convert import export
from ldm_jax.convert import files
from ldm_jax.convert import load
from ldm_jax.sampling import sampler as sampler_lib
from tests import references
from tests import torch_reference as ref

diffusers = references.require("diffusers")
torch = ref.torch
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [pytest.mark.slow, pytest.mark.parity]


def test_converted_compvis_checkpoint_samples_like_diffusers(tmp_path, monkeypatch):
  config = ldm_cin256.get_config("tiny")  # Class tokens through cross-attention, KL f=2.
  unet_block, vae_block = config.network, config.autoencoder
  unet = diffusers.UNet2DConditionModel(
      **diffusers_configs.unet_condition_kwargs(unet_block.to_dict()))
  vae = diffusers.AutoencoderKL(latent_channels=vae_block.z_channels,
                                **diffusers_configs.autoencoder_kwargs(vae_block.to_dict()))
  ref.randomize(unet, seed=1)
  ref.randomize(vae, seed=2)
  unet.eval()
  vae.eval()
  classes = config.conditioner.num_classes + 1  # The null class row.
  embedding = np.random.default_rng(3).standard_normal(
      (classes, config.conditioner.embed_dim)).astype(np.float32)
  scale = 0.7
  state = {**ref.compvis_unet_state(unet_block, unet),
           **ref.compvis_autoencoder_state(vae_block, vae),
           compvis.CONDITIONER_PREFIX + "embedding.weight": embedding,
           "scale_factor": np.asarray(scale, np.float32)}
  checkpoint = tmp_path / "cin_tiny.ckpt"
  torch.save({"state_dict": {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}},
             checkpoint)
  out = tmp_path / "converted"
  done = subprocess.run([sys.executable, "-m", "ldm_jax.convert", str(checkpoint),
                         "--config=configs/ldm_cin256.py:tiny", f"--out={out}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  # The CLI's import path reads the file once for all three parts and its scale factor.
  reads = []
  read_file = files.read_file
  monkeypatch.setattr(files, "read_file", lambda path: reads.append(path) or read_file(path))
  parts, resolved = load.import_parts(str(checkpoint), ldm_cin256.get_config("tiny"))
  assert reads == [str(checkpoint)] and sorted(parts) == ["autoencoder", "conditioner", "network"]
  assert resolved.first_stage.scale_factor == pytest.approx(scale)
  for name, params in parts.items():
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(export.read(str(out), name))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  model = sampler_lib.load(checkpoint=str(out))
  assert model.model.first_stage.scale_factor == pytest.approx(scale)  # From the file.
  labels, steps, seed = [2, 7, 7, 9], 5, 11
  ours = model.sample(4, class_label=labels, steps=steps, guidance_scale=1.0, seed=seed)

  side = config.data.image_size // 2
  x_T = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(jax.random.key(seed), i),
                                             (side, side, vae_block.z_channels)))(jnp.arange(4))
  scheduler = diffusers.DDIMScheduler(
      num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195,
      beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=True,
      steps_offset=0, timestep_spacing="leading")
  scheduler.set_timesteps(steps)
  latents = ref.nchw(np.asarray(x_T))
  context = torch.from_numpy(embedding[labels])[:, None]
  with torch.no_grad():
    for t in scheduler.timesteps:
      eps = unet(latents, t, encoder_hidden_states=context).sample
      latents = scheduler.step(eps, t, latents).prev_sample
    images = vae.decode(latents / scale).sample.clamp(-1, 1)
  theirs = np.round((ref.nhwc(images) + 1) * 127.5).astype(int)
  difference = np.abs(ours.images.astype(int) - theirs)
  print(f"uint8 levels: max |ours - diffusers| {difference.max()}, mean {difference.mean():.4f}")
  assert ours.images.shape == theirs.shape == (4, 16, 16, 1)
  assert difference.max() <= 2 and difference.mean() < 0.1, (difference.max(),
                                                              difference.mean())
  assert theirs.std() > 10  # Not a blank image on both sides.
