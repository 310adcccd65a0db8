"""benchmark.py's standard points: `--config=configs/benchmark.py:point=NAME[,tiny]`.

  sd_unet_256   Stable Diffusion's UNet (`sd=1`: v1's, 77 context tokens of 768; `sd=2`:
                v2's, 1024-wide, MLPerf's model) on 32x32x4 latents (256 px through kl-f8):
                unet_step, ldm_step (the library's step on precomputed latents and caption
                contexts, as MLPerf's recipe: configs/stable_diffusion.py with
                data.latent_key), sampling;
  sd_unet_512   the same on 64x64x4 latents (512 px);
  cin256        LDM cin256-v2 (class-conditional ImageNet, vq-f4, 64x64x3): unet_step,
                ldm_step (images through the frozen vq-f4 encoder, the class embedder),
                sampling;
  celebahq256   LDM CelebA-HQ 256 (unconditional, vq-f4): the same three;
  kl_f8         the SD VAE (kl-f8) at 256 px: vae_step (L1 + KL), autoencoder_step (with
                the PatchGAN; LPIPS off: it needs weights), vae_encode and vae_decode
                (inference: images to latents, latents to images);
  uvit_256      simple diffusion's U-ViT on 256 px ImageNet-shaped pixels (class labels,
                configs/simple_diffusion.py:res=256): unet_step, ldm_step (the library's
                step: continuous time, multiscale eps loss), sampling.
`tiny` shrinks every network (32 channels, 16-32 px, float32) for CPUs and the tests. The
`benchmark` block holds the run's settings; benchmark.py's flags override them.
"""

import ml_collections

from configs import autoencoder_kl_f8
from configs import common
from configs import ldm_celebahq256
from configs import ldm_cin256
from configs import simple_diffusion
from configs import stable_diffusion

POINTS = ("sd_unet_256", "sd_unet_512", "cin256", "celebahq256", "kl_f8", "uvit_256")
LDM_MEASURES = ("unet_step", "ldm_step", "sampling")


def _sd_unet(tiny: bool, image_size: int, version: int):
  """Stable Diffusion's recipe (configs/stable_diffusion.py) as MLPerf trains it: latents and
  caption contexts precomputed (`data.latent_key`; the frozen text encoder's embeddings), so a
  step is the UNet's update alone. No cache on disk (`data.name` None): synthetic encodings."""
  config = stable_diffusion.get_config(f"model=v{version}" + (",tiny" if tiny else ""))
  config.first_stage.update(source="random", path=None)
  config.conditioning.update(text_encoder="random", tokenizer=None)
  config.init_from = None
  config.data.update(name=None, folder=None, image_size=image_size, latent_key="moments")
  return config, ("unet_step", "ldm_step", "sampling"), 77


def get_config(arg=None):
  variant = common.parse_arg(arg, point="sd_unet_256", sd=1, tiny=False)
  if variant.point not in POINTS:
    raise ValueError(f"configs/benchmark.py:point={variant.point!r}: expected one of "
                     f"{POINTS}.")
  tiny = variant.tiny
  if variant.point.startswith("sd_unet"):
    size = 512 if variant.point == "sd_unet_512" else 256
    if variant.sd not in (1, 2):
      raise ValueError(f"configs/benchmark.py:sd={variant.sd!r}: expected 1 (SD 1.x's UNet, "
                       f"768-wide CLIP context) or 2 (SD 2.x's, 1024-wide OpenCLIP context).")
    config, measures, tokens = _sd_unet(tiny, size, variant.sd)
  elif variant.point == "kl_f8":
    config = autoencoder_kl_f8.get_config("tiny" if tiny else None)
    config.loss.perceptual_weight = 0.0
    if not tiny:
      config.data.image_size = config.autoencoder.resolution = 256
    measures, tokens = ("vae_step", "autoencoder_step", "vae_encode", "vae_decode"), 0
  elif variant.point == "uvit_256":
    config = simple_diffusion.get_config("res=256" + (",tiny" if tiny else ""))
    measures, tokens = LDM_MEASURES, 0
  else:
    module = ldm_cin256 if variant.point == "cin256" else ldm_celebahq256
    config = module.get_config("tiny" if tiny else None)
    config.first_stage.update(source="random", path=None)
    if tiny and variant.point == "celebahq256":  # Channels per head, as the full model.
      config.network.update(num_heads=-1, num_head_channels=16)
    if config.first_stage.scale_factor is None:
      config.first_stage.scale_factor = 1.0
    measures, tokens = LDM_MEASURES, 1
  image_size = int(config.data.image_size)
  if tiny and config.get("stage") == "ldm":
    image_size = 32 if variant.point == "sd_unet_512" else 16  # Twice the latent side.
  if tiny and config.get("stage") == "autoencoder":
    image_size = 32
  config.benchmark = ml_collections.ConfigDict(dict(
      point=variant.point + (f":sd{variant.sd}" if variant.point.startswith("sd_") else "")
      + (":tiny" if tiny else ""), measure=measures,
      batch_size=8 if tiny else 16, image_size=image_size,
      dtype="float32" if tiny else "bfloat16", remat="none", attention_impl="auto",
      warmup=2, steps=5 if tiny else 20, sampling_steps=4 if tiny else 50,
      guidance_scale=1.0, context_tokens=tokens, compare=""))
  return config
