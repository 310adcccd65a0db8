"""Make the LPIPS-VGG16 weights file (.npz) from PyTorch files.

  python -m ldm_jax.eval.lpips_convert --vgg=vgg16-397923af.pth \
      --heads=<site-packages>/lpips/weights/v0.1/vgg.pth --out=lpips_vgg.npz

--vgg is torchvision's ImageNet VGG16 state dict (the file `torchvision.models.vgg16(
pretrained=True)` caches, as the lpips package loads it), or a state dict with the lpips
package's `net.sliceK.N.*` trunk keys; --heads is the lpips package's linear heads. Read it
back with `ldm_jax.metrics.lpips.load_params`.
"""

from absl import app
from absl import flags

from ldm_jax.metrics import lpips

_VGG = flags.DEFINE_string("vgg", None, "torchvision VGG16 state dict (features.N.*).")
_HEADS = flags.DEFINE_string("heads", None, "The lpips package's weights/v0.1/vgg.pth.")
_OUT = flags.DEFINE_string("out", None, "New .npz file for the converted weights.")
flags.mark_flags_as_required(["vgg", "heads", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; give only --vgg, --heads and "
                         f"--out.")
  lpips.convert(vgg=_VGG.value, heads=_HEADS.value, out=_OUT.value)
  print(f"wrote LPIPS-VGG16 weights to {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
