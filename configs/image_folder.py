"""Your own images: a folder with one subfolder per class (optional) and optional captions.

  python -m ldm_jax.data --config=configs/image_folder.py:folder=/path/to/images --out=x.png
  python -m ldm_jax.data --config=configs/image_folder.py:folder=/path,size=128 --out=x.png

The folder is prepared once into the TFDS data_dir (`--config.data.data_dir`). This file holds
the data part for now; the autoencoder and LDM stages add their settings in later issues.
"""

from configs import common


def get_config(arg=None):
  variant = common.parse_arg(arg, folder="", size=64, tiny=False)
  config = common.base_config()
  config.data = common.data_config(name="image_folder", image_size=variant.size,
                                   batch_size=16, crop="random", random_flip=True)
  config.data.folder = variant.folder or None
  if variant.tiny:
    config.data.image_size = min(variant.size, 32)
    config.data.batch_size = 8
  return config
