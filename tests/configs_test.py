"""Config files load through ml_collections' config_flags: variants, overrides, locking."""

from absl import flags
from ml_collections import config_flags
import pytest

from configs import common


def _load(argv):
  argv = ["prog", *argv]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def test_variant_and_override():
  config = _load(["--config=configs/digits_ldm.py:tiny", "--config.data.batch_size=8",
                  "--config.data.data_dir=/tmp/x"])
  assert config.data.image_size == 16 and config.data.batch_size == 8
  assert config.data.data_dir == "/tmp/x" and config.data.label_key == "label"


def test_locked_config_rejects_unknown_keys():
  with pytest.raises(AttributeError, match='batch_sise.*Did you mean "batch_size"'):
    _load(["--config=configs/digits_ldm.py", "--config.data.batch_sise=8"])


def test_image_folder_variant():
  config = _load(["--config=configs/image_folder.py:folder=/data/pets,size=128"])
  assert config.data.folder == "/data/pets" and config.data.image_size == 128


def test_parse_arg():
  assert common.parse_arg("tiny,f=8", tiny=False, f=4).to_dict() == {"tiny": True, "f": 8}
  assert common.parse_arg(None, tiny=False).tiny is False
  with pytest.raises(ValueError, match=r"variant 'tyny' is unknown.*\['tiny'\]"):
    common.parse_arg("tyny", tiny=False)
  with pytest.raises(ValueError, match="f='x': expected a int"):
    common.parse_arg("f=x", f=4)
  with pytest.raises(ValueError, match="needs a value"):
    common.parse_arg("f", f=4)


@pytest.mark.parametrize("name", ["autoencoder_kl_f4", "autoencoder_kl_f8", "vq_f4",
                                  "digits_autoencoder"])
@pytest.mark.parametrize("variant", ["", ":tiny"])
def test_autoencoder_stage_configs_build(name, variant):
  """Full and tiny configs give a stage whose state traces (nothing allocated)."""
  import jax  # pylint: disable=import-outside-toplevel
  from ldm_jax.training import stages  # pylint: disable=import-outside-toplevel
  config = _load([f"--config=configs/{name}.py{variant}", "--config.loss.perceptual_weight=0"])
  state = jax.eval_shape(stages.create(config).init_state, jax.random.key(0))
  ae = state.params["generator"]["autoencoder"]
  assert ae["decoder"]["conv_out"]["kernel"].shape[-1] == config.autoencoder.out_ch
  assert config.data.image_size % 2 ** (len(config.autoencoder.ch_mult) - 1) == 0


@pytest.mark.parametrize("spec", ["ldm_celebahq256.py", "ldm_cin256.py", "ldm_cin256.py:f=1",
                                  "ldm_cin256.py:f=8", "ldm_cin256.py:f=32",
                                  "ldm_txt2img.py", "ldm_sr.py", "ldm_inpainting.py",
                                  "ldm_semantic.py", "ldm_paired.py:dataset=pairs",
                                  "stable_diffusion.py:model=v2_768",
                                  "stable_diffusion.py:model=ldm_txt2img"])
def test_ldm_stage_configs_build(spec, tmp_path):
  """The full-size LDM configs' blocks agree (latent and concatenated channels, context
  widths, classes): the stage builds on a random first stage and its state traces."""
  import jax  # pylint: disable=import-outside-toplevel
  from ldm_jax.training import stages  # pylint: disable=import-outside-toplevel
  argv = [f"--config=configs/{spec}"]
  if not spec.endswith("f=1"):
    argv.append("--config.first_stage.source=random")
  if spec.startswith("stable_diffusion") and not spec.endswith("ldm_txt2img"):
    from tests import references  # pylint: disable=import-outside-toplevel
    argv += ["--config.conditioning.text_encoder=random",  # Frozen CLIP, random here.
             f"--config.conditioning.tokenizer={references.write_clip_vocab(tmp_path)}"]
  config = _load(argv)
  # Traced as a whole, the random first stage included: nothing is compiled or allocated.
  state = jax.eval_shape(lambda key: stages.create(config).init_state(key),
                         jax.random.key(0))
  unet = state.params["model"]["network"]
  assert unet["conv_out"]["kernel"].shape[-1] == config.network.out_channels
  assert unet["conv_in"]["kernel"].shape[-2] == config.network.in_channels
