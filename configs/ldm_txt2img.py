"""Text-to-image LDM (the paper's LDM-KL-8-G layout: kl-f8 latents, a transformer text
encoder trained jointly with the UNet, cross-attention at three levels).

  python train.py --config=configs/ldm_txt2img.py:folder=/data/captioned --workdir=DIR \
      --config.first_stage.path=<kl-f8 autoencoder workdir or converted SD VAE> \
      --config.first_stage.source=export --config.first_stage.scale_factor=0.18215
Captions come from `photo.txt` next to `photo.jpg` (configs/image_folder.py). Tokens are
UTF-8 bytes unless `conditioning.tokenizer` names a vocabulary (e.g. BERT's vocab.txt, as
the paper's model; then set conditioner.vocab_size=30522).
Variants: folder=DIR, size=256, tiny (digits captions, random tiny autoencoder).
"""

import ml_collections

from configs import architectures
from configs import common


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False, folder="", size=256)
  unet = architectures.sd_v1_unet()
  unet.context_dim = 1280
  # The paper's 1.45B model: a 32-layer, 1280-wide transformer over 77 tokens.
  encoder = ml_collections.ConfigDict(dict(
      type="text", vocab_size=259, max_length=77, width=1280, depth=32, heads=8,
      head_dim=64, mlp_ratio=4, dropout=0.0, attention_impl="auto", dtype="float32",
      param_dtype="float32"))
  config = common.ldm_stage_config(unet, autoencoder=architectures.sd_kl_f8(),
                                   conditioner=encoder, type="text", dropout=0.1)
  config.data = common.data_config(name="image_folder", image_size=variant.size,
                                   batch_size=64, crop="random", random_flip=False,
                                   caption_key="caption")
  config.data.folder = variant.folder or None
  config.optimizer.learning_rate = 1e-4
  config.num_steps = 500_000
  config.sampling.update(steps=50, per_row=4, guidance_scale=5.0, prompts=(
      "a painting of a lighthouse at night", "a photograph of a red bicycle",
      "a watercolor of a cat"))
  if variant.tiny:
    common.tiny_data(config, "digits")
    config.data.label_key = None
    common.shrink_ldm_stage(config)
    config.conditioner.max_length = 32
    config.sampling.prompts = ("a handwritten digit one", "a handwritten digit seven")
  return config
