"""Semantic synthesis LDM: a segmentation map, one-hot and area-averaged to latent size,
concatenated to the vq-f4 latents (the paper's landscapes model: 182 COCO-Stuff classes).

  python train.py --config=configs/ldm_semantic.py --workdir=DIR \
      --config.first_stage.path=<vq-f4 autoencoder workdir>
Default data: TFDS `scene_parse150` (ADE20K; `annotation` maps with 151 values, 0 = other).
Point `data.label_map_keys` / `conditioning.key` / `num_semantic_classes` at your dataset's.
Variants: tiny (the digits' 3-class ink maps, random tiny autoencoder).
"""

from configs import architectures
from configs import common


def get_config(arg=None):
  variant = common.parse_arg(arg, tiny=False)
  classes = 151
  unet = architectures.ldm_celebahq256_unet()
  # CompVis semantic synthesis: 128 channels, mults (1, 4, 8), attention at 32, 16, 8 px.
  unet.update(in_channels=3 + classes, out_channels=3, model_channels=128,
              channel_mult=(1, 4, 8), attention_resolutions=(2, 4, 8), num_heads=8,
              num_head_channels=-1)
  config = common.ldm_stage_config(unet, autoencoder=architectures.vq_f4(), type="semantic",
                                   key="annotation", num_semantic_classes=classes)
  config.data = common.data_config(name="scene_parse150", image_size=256, batch_size=8,
                                   crop="random", random_flip=True,
                                   label_map_keys=("annotation",), eval_split="test")
  config.num_steps = 400_000
  config.sampling.update(steps=50, per_row=4)
  if variant.tiny:
    common.tiny_data(config, "digits")
    config.data.update(label_key=None, caption_key=None, label_map_keys=("segmentation",))
    config.conditioning.update(key="segmentation", num_semantic_classes=3)
    config.network.in_channels = config.network.out_channels + 3
    common.shrink_ldm_stage(config)
  return config
