"""Sampling (ldm_jax/sampling) on tiny one-step checkpoints of every conditioning mode: shapes,
conditions, determinism, 8 devices vs 1, converted directories, and every bad input refused
before anything is compiled."""

import numpy as np
import pytest

from ldm_jax.sampling import sampler as sampler_lib

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def class_model(tiny_run):
  return sampler_lib.load(tiny_run("digits_ldm:tiny"))


def _refused(model, match, **kw):
  """The call raises ValueError matching `match`, and nothing new was compiled."""
  compiled = dict(model._compiled)  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=match):
    model.sample(**kw)
  assert model._compiled == compiled  # pylint: disable=protected-access


def test_class_samples_are_seeded_and_batch_independent(class_model):
  first = class_model.sample(12, class_label=3, seed=0, batch_size=8)
  assert first.images.shape == (12, 16, 16, 1) and first.images.dtype == np.uint8
  assert first.conditions == [3] * 12
  assert first.settings["steps"] == 2 and first.settings["num_devices"] == 8
  again = class_model.sample(12, class_label=3, seed=0, batch_size=8)
  np.testing.assert_array_equal(first.images, again.images)
  other = class_model.sample(12, class_label=3, seed=1, batch_size=8)
  assert np.abs(first.images.astype(int) - other.images.astype(int)).max() > 10
  # Sample i starts from fold_in(seed, i): another batch size gives the same images.
  wide = class_model.sample(12, class_label=3, seed=0)  # One batch of 16 (the default).
  assert wide.settings["batch_size"] == 16
  assert np.abs(first.images.astype(int) - wide.images.astype(int)).max() <= 1


def test_all_classes_one_row_each_with_guidance(class_model):
  result = class_model.sample(20, guidance_scale=3.0)
  assert result.conditions == sorted(list(range(10)) * 2) and result.columns == 2
  assert result.grid().shape == (10 * 18, 2 * 18, 1)


def test_eight_devices_equal_one(class_model, tiny_run):
  import jax  # pylint: disable=import-outside-toplevel
  one = sampler_lib.load(tiny_run("digits_ldm:tiny"), devices=jax.local_devices()[:1])
  kw = dict(num_samples=8, class_label=[1, 7], sampler="ddpm", steps=3, seed=5)
  sharded, single = class_model.sample(**kw), one.sample(**kw)
  assert sharded.settings["num_devices"] == 8 and single.settings["num_devices"] == 1
  assert np.abs(sharded.images.astype(int) - single.images.astype(int)).max() <= 1


def test_bad_inputs_are_refused_before_compiling(class_model, tmp_path):
  _refused(class_model, r"class_label=10: expected an integer in 0 \.\. 9", class_label=10)
  _refused(class_model, "prompt was given, but the model is conditioned by 'class'",
           prompt="a three")
  _refused(class_model, r"sampler='euler': expected one of", sampler="euler")
  _refused(class_model, r"steps=0: expected 1 \.\. 1000", steps=0)
  _refused(class_model, "eta=0.5: expected >= 0, and 0 unless sampler='ddim'", eta=0.5,
           sampler="plms")
  _refused(class_model, "batch_size=4: expected a positive multiple of the 8", batch_size=4)
  _refused(class_model, "num_samples=5 is fewer than the 10 conditions", num_samples=5)
  _refused(class_model, r"seed=-1: expected an integer in 0 \.\. 2\*\*32 - 1", seed=-1)
  with pytest.raises(FileNotFoundError, match="has no checkpoints/ folder"):
    sampler_lib.load(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="expected a run's checkpoints/<step> folder"):
    sampler_lib.load(checkpoint=str(tmp_path))


# One model per test: the first test to ask for a shared tiny run trains it.
def test_unconditional(tiny_run):
  none = sampler_lib.load(tiny_run("digits_ldm:tiny,cond=none"))
  assert none.sample(3).images.shape == (3, 16, 16, 1)
  _refused(none, "class_label was given, but the model is conditioned by 'none'",
           class_label=1)
  _refused(none, "prompt was given, but the model is conditioned by 'none': it takes no "
           "condition", prompt="a three")
  _refused(none, "guidance_scale=2.0: classifier-free guidance needs a conditional model",
           guidance_scale=2.0)


def test_text(tiny_run):
  text = sampler_lib.load(tiny_run("digits_ldm:tiny,cond=caption"))
  result = text.sample(4, prompt=["a handwritten digit one", "a handwritten digit two"])
  assert result.images.shape == (4, 16, 16, 1) and result.columns == 2
  assert result.conditions[1:3] == ["a handwritten digit one", "a handwritten digit two"]
  _refused(text, "The model is text-conditional: give a prompt")


def test_paired_image(tiny_run):
  paired = sampler_lib.load(tiny_run("ldm_paired:tiny"))
  ink = np.random.default_rng(0).integers(0, 3, (2, 16, 16, 1)).astype(np.uint8)
  assert paired.sample(cond_image=ink).conditions == [0, 1]  # One per image by default.
  result = paired.sample(16, cond_image=ink, batch_size=8)
  assert result.images.shape == (16, 16, 16, 1) and result.columns == 8
  assert result.conditions == [0] * 8 + [1] * 8
  _refused(paired, r"cond_image: 3 channels .* the model expects 1",
           cond_image=np.zeros((16, 16, 3), np.uint8))
  _refused(paired, r"the output would be 15 px, which must be a multiple of 2 \(autoencoder "
           "f=2", cond_image=ink[0, :15, :15])


def test_super_resolution(tiny_run):
  rng = np.random.default_rng(0)
  sr = sampler_lib.load(tiny_run("ldm_sr:tiny"))
  low = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
  result = sr.sample(2, cond_image=low)
  assert result.images.shape == (2, 16, 16, 3)  # x2: the tiny degradation factor.
  _refused(sr, "expected a square image", cond_image=low[:, :6])


def test_inpainting(tiny_run):
  rng = np.random.default_rng(1)
  inpaint = sampler_lib.load(tiny_run("ldm_inpainting:tiny"))
  image = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
  mask = np.zeros((16, 16), bool)
  mask[4:12, 2:9] = True
  result = inpaint.sample(2, image=image, mask=mask)
  np.testing.assert_array_equal(result.images[:, ~mask], np.stack([image[~mask]] * 2))
  raw = inpaint.sample(2, image=image, mask=mask, paste_known=False)
  assert np.abs(raw.images[:, ~mask].astype(int) - image[~mask]).mean() > 5
  np.testing.assert_array_equal(raw.images[:, mask], result.images[:, mask])
  _refused(inpaint, "mask: shape \\(16, 12\\); expected the image's 16x16", image=image,
           mask=mask[:, :12])
  _refused(inpaint, "The model inpaints: give mask", image=image)


def test_semantic_map(tiny_run):
  rng = np.random.default_rng(2)
  semantic = sampler_lib.load(tiny_run("ldm_semantic:tiny"))
  labels = rng.integers(0, 3, (16, 16))
  assert semantic.sample(1, semantic_map=labels).images.shape == (1, 16, 16, 1)
  _refused(semantic, r"class ids in \[1, 3\]; the model has 3 classes", semantic_map=labels + 1)


def test_converted_directory_samples_like_the_run(class_model, tmp_path):
  """A directory in `python -m ldm_jax.convert`'s layout (network, autoencoder, config.json
  with the LDM config) gives the run's images, and so does one in the layout written before
  `config.network` (unet/ and a `unet` config block without a type)."""
  from ldm_jax.convert import export  # pylint: disable=import-outside-toplevel
  model = class_model.model
  config = class_model.config.copy_and_resolve_references()
  config.first_stage.scale_factor = model.first_stage.scale_factor
  import jax  # pylint: disable=import-outside-toplevel
  params = jax.tree.map(np.asarray, class_model._params)  # pylint: disable=protected-access
  export.write(str(tmp_path / "converted"), {
      "network": params["network"], "autoencoder": model.first_stage_params}, config)
  converted = sampler_lib.load(checkpoint=str(tmp_path / "converted"))
  kw = dict(num_samples=8, class_label=4, seed=3)
  expected = class_model.sample(**kw).images
  np.testing.assert_array_equal(converted.sample(**kw).images, expected)
  legacy = config.copy_and_resolve_references()
  with legacy.unlocked():
    legacy.unet = legacy.network.copy_and_resolve_references()
    del legacy.unet["type"]
    del legacy["network"]
  export.write(str(tmp_path / "legacy"), {
      "unet": params["network"], "autoencoder": model.first_stage_params}, legacy)
  old = sampler_lib.load(checkpoint=str(tmp_path / "legacy"))
  assert old.config.network.type == "unet" and "unet" not in old.config
  np.testing.assert_array_equal(old.sample(**kw).images, expected)
  with pytest.raises(ValueError, match="exactly one of workdir"):
    sampler_lib.load(str(tmp_path), checkpoint=str(tmp_path))
