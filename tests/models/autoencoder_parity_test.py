"""AutoencoderKL and VQModel against diffusers (PyTorch, float32) with identical weights."""

import jax
import numpy as np
import pytest

from ldm_jax.convert import diffusers_configs
from tests import references
from tests import torch_reference as ref

diffusers = references.require("diffusers")
torch = ref.torch

from ldm_jax.models.autoencoder import AutoencoderKL  # pylint: disable=g-import-not-at-top
from ldm_jax.models.vq import VQModel  # pylint: disable=g-import-not-at-top

TOLERANCE = 1e-4

# (ch, ch_mult, num_res_blocks, attn_resolutions, channels in/out, z_channels), resolution 16
SETTINGS = {
    "plain": dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                  in_channels=3, out_ch=3, z_channels=4),
    "attn_at_8": dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,),
                      in_channels=3, out_ch=3, z_channels=4),
    "gray_attn_16_4": dict(ch=64, ch_mult=(1, 1, 2), num_res_blocks=1,
                           attn_resolutions=(16, 4), in_channels=1, out_ch=1, z_channels=3),
}
RESOLUTION = 16


def diffusers_blocks(s):
  return diffusers_configs.autoencoder_kwargs({**s, "resolution": RESOLUTION})


def _image(s, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (2, RESOLUTION, RESOLUTION,
                                                     s["in_channels"])).astype(np.float32)


@pytest.mark.parity
@pytest.mark.parametrize("name", list(SETTINGS))
def test_autoencoder_kl_matches_diffusers(name):
  s = SETTINGS[name]
  theirs = diffusers.AutoencoderKL(latent_channels=s["z_channels"], **diffusers_blocks(s))
  ref.randomize(theirs, seed=1)
  theirs.eval()
  ours = AutoencoderKL(resolution=RESOLUTION, embed_dim=s["z_channels"], **s)
  x = _image(s)
  params = ref.params_from(theirs, ours, x)
  with torch.no_grad():
    posterior = theirs.encode(ref.nchw(x)).latent_dist
    z = posterior.mean
    decoded = theirs.decode(z).sample
  ours_posterior = ours.apply({"params": params}, x, method=ours.encode)
  ours_decoded = ours.apply({"params": params}, ref.nhwc(z), method=ours.decode)
  errors = {"mean": ref.relative_error(ours_posterior.mean, ref.nhwc(posterior.mean)),
            "logvar": ref.relative_error(ours_posterior.logvar, ref.nhwc(posterior.logvar)),
            "decode": ref.relative_error(ours_decoded, ref.nhwc(decoded))}
  print(f"AutoencoderKL[{name}] relative errors: {errors}")
  assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.parity
@pytest.mark.parametrize("name", list(SETTINGS))
def test_vq_model_matches_diffusers(name):
  s = SETTINGS[name]
  embed_dim, n_embed = 3, 64
  theirs = diffusers.VQModel(latent_channels=s["z_channels"], vq_embed_dim=embed_dim,
                             num_vq_embeddings=n_embed, **diffusers_blocks(s))
  ref.randomize(theirs, seed=2)
  theirs.eval()
  ours = VQModel(resolution=RESOLUTION, embed_dim=embed_dim, n_embed=n_embed, **s)
  x = _image(s, seed=1)
  params = ref.params_from(theirs, ours, x)
  with torch.no_grad():
    h = theirs.encode(ref.nchw(x)).latents
    z_q, loss, (_, _, indices) = theirs.quantize(h)
    decoded = theirs.decode(h).sample
  ours_h = ours.apply({"params": params}, x, method=ours.encode)
  quantized = ours.apply({"params": params}, ours_h, method=ours.quantize_latents)
  ours_decoded = ours.apply({"params": params}, quantized.latents, method=ours.decode)
  np.testing.assert_array_equal(np.asarray(quantized.indices).reshape(-1),
                                indices.numpy().reshape(-1))
  assert len(np.unique(indices.numpy())) > 4  # The test sees more than one code.
  errors = {"latents": ref.relative_error(ours_h, ref.nhwc(h)),
            "quantized": ref.relative_error(quantized.latents, ref.nhwc(z_q)),
            "loss": ref.relative_error(quantized.loss, loss.numpy()),
            "decode": ref.relative_error(ours_decoded, ref.nhwc(decoded))}
  print(f"VQModel[{name}] relative errors: {errors}")
  assert max(errors.values()) <= TOLERANCE, errors
  roundtrip = ours.apply({"params": params}, quantized.indices, method=ours.decode_indices)
  # Not bit for bit: the quantized latents are z + (z_q - z) (straight-through), a rounding
  # away from the looked-up codes z_q, and decoded 1.9e-6 apart (relative) here.
  assert ref.relative_error(roundtrip, ours_decoded) <= TOLERANCE
