"""Make the FID Inception weights file (.npz) from pytorch-fid's PyTorch file.

  python -m ldm_jax.eval.inception_convert \
      --weights=pt_inception-2015-12-05-6726825d.pth --out=inception_fid.npz

--weights is pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (its release page on GitHub)
or torch-fidelity's `weights-inception-2015-12-05-6726825d.pth`: the TF 2015-12-05 graph's
weights in torchvision's names. The file's sha256 is stored with the parameters, and every
result computed with them names it. Read it back with `ldm_jax.metrics.inception.load_params`.
"""

from absl import app
from absl import flags

from ldm_jax.metrics import inception

_WEIGHTS = flags.DEFINE_string("weights", None, "pytorch-fid's Inception state dict (.pth).")
_OUT = flags.DEFINE_string("out", None, "New .npz file for the converted weights.")
flags.mark_flags_as_required(["weights", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; give only --weights and --out.")
  info = inception.convert(_WEIGHTS.value, _OUT.value)
  print(f"wrote FID Inception weights to {_OUT.value} (source sha256 {info['source_sha256']})")
  if not info["name_hash_match"]:
    print(f"The sha256 does not start with {inception.NAME_HASH}, the hash in the reference "
          f"files' names: check that these are the 2015-12-05 weights FID tables use.")

if __name__ == "__main__":
  app.run(main)
