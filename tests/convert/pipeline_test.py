"""Whole text-to-image pipelines, end to end: diffusers' StableDiffusionPipeline with random
weights (SD-1-shaped: CLIP quick_gelu, 8 heads; SD-2-shaped: gelu, 64-channel heads, linear
projections, v-prediction, pad 0), saved as a diffusers folder and as a CompVis single file,
converted by our CLI code, sampled from a prompt and a negative prompt at a non-square size
with guidance 7.5 (DDIM and DPM-Solver++): the images equal diffusers' from the same
starting latents within 1 uint8 level per pixel.

The single file is written from the same torch weights under CompVis names: the UNet and VAE
names by convert/compvis.py's rules (checked against diffusers' own converters and the CompVis
code in compvis_test.py / compvis_reference_test.py), SD 2's text encoder in OpenCLIP's layout
(checked against Stability's embedder in text_encoders_test.py) with one more, unused, block.
Both conversions must give identical parameters and the same config.
"""

import json
import os
import types

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from ldm_jax import sampling
from ldm_jax.convert import export
from ldm_jax.convert import pipeline
from tests import references
from tests import torch_reference as ref

torch = ref.torch
diffusers = references.require("diffusers")
transformers = references.require("transformers")

PROMPTS = ["a photograph of a red bicycle", "an oil painting of a lighthouse at night!!"]
NEGATIVE = ["blurry", "low quality, jpeg artifacts"]
HEIGHT, WIDTH, STEPS = 32, 48, 4
SHAPES = {  # UNet widths, head counts (diffusers' attention_head_dim), text width / act.
    "sd1": dict(widths=(32, 64), heads=8, linear=False, act="quick_gelu", pad="<|endoftext|>",
                prediction="epsilon"),
    "sd2": dict(widths=(64, 128), heads=(1, 2), linear=True, act="gelu", pad="!",
                prediction="v_prediction"),
}
TEXT_WIDTH, TEXT_LAYERS = 128, 2


def _scheduler(kind: str, prediction: str):
  betas = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
               prediction_type=prediction)
  if kind == "ddim":
    return diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                   **betas)
  return diffusers.DPMSolverMultistepScheduler(
      solver_order=2, algorithm_type="dpmsolver++", final_sigmas_type="zero",
      timestep_spacing="linspace", **betas)


def diffusers_pipeline(family: str, clip_dir: str):
  """A tiny StableDiffusionPipeline of `family`'s shape with random weights (the notebook's
  test converts one too)."""
  shape = SHAPES[family]
  torch.manual_seed(0)
  unet = diffusers.UNet2DConditionModel(
      sample_size=16, in_channels=4, out_channels=4, block_out_channels=shape["widths"],
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
      cross_attention_dim=TEXT_WIDTH, attention_head_dim=shape["heads"],
      use_linear_projection=shape["linear"], norm_num_groups=32)
  vae = diffusers.AutoencoderKL(
      in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
      latent_channels=4, norm_num_groups=32, sample_size=32)
  text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
      num_hidden_layers=TEXT_LAYERS, num_attention_heads=TEXT_WIDTH // 64,
      max_position_embeddings=77, hidden_act=shape["act"], bos_token_id=49406,
      eos_token_id=49407))
  ref.randomize(text, seed=1)  # Default CLIP init would leave the context near constant.
  tokenizer = transformers.CLIPTokenizer.from_pretrained(clip_dir, pad_token=shape["pad"],
                                                         model_max_length=77)
  pipe = diffusers.StableDiffusionPipeline(
      vae=vae.eval(), text_encoder=text.eval(), tokenizer=tokenizer, unet=unet.eval(),
      scheduler=_scheduler("ddim", shape["prediction"]), safety_checker=None,
      feature_extractor=None, requires_safety_checker=False)
  pipe.set_progress_bar_config(disable=True)
  return pipe


def _open_clip_layout(text_state: dict, width: int) -> dict:
  """transformers CLIPTextModel names -> OpenCLIP's (SD 2.x files), plus one more block
  that SD 2 never runs (the penultimate layer is its context)."""
  state = {k.removeprefix("text_model."): v.numpy() for k, v in text_state.items()}
  out = {"token_embedding.weight": state["embeddings.token_embedding.weight"],
         "positional_embedding": state["embeddings.position_embedding.weight"],
         "ln_final.weight": state["final_layer_norm.weight"],
         "ln_final.bias": state["final_layer_norm.bias"],
         "text_projection": np.ones((width, width), np.float32),
         "logit_scale": np.ones((), np.float32)}
  rng = np.random.default_rng(0)
  for i in range(TEXT_LAYERS + 1):
    ours, theirs = f"encoder.layers.{min(i, TEXT_LAYERS - 1)}.", f"transformer.resblocks.{i}."
    for leaf in ("weight", "bias"):
      out[f"{theirs}attn.in_proj_{leaf}"] = np.concatenate(
          [state[f"{ours}self_attn.{p}_proj.{leaf}"] for p in "qkv"])
      for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                   ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
        out[f"{theirs}{a}.{leaf}"] = state[f"{ours}{b}.{leaf}"]
    if i == TEXT_LAYERS:  # The unused last block: other values.
      for key in [k for k in out if k.startswith(theirs)]:
        out[key] = rng.normal(size=out[key].shape).astype(np.float32)
  return {f"cond_stage_model.model.{k}": v for k, v in out.items()}


def _single_file(family: str, pipe, path: str) -> None:
  unet_block = types.SimpleNamespace(attention_resolutions=(1,), channel_mult=(1, 2),
                                     num_res_blocks=1)
  state = ref.compvis_unet_state(unet_block, pipe.unet)
  state.update(ref.compvis_autoencoder_state(types.SimpleNamespace(ch_mult=(1, 2)), pipe.vae))
  if family == "sd1":
    state.update({f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}":
                  v.numpy() for k, v in pipe.text_encoder.state_dict().items()})
  else:
    state.update(_open_clip_layout(pipe.text_encoder.state_dict(), TEXT_WIDTH))
  state["alphas_cumprod"] = pipe.scheduler.alphas_cumprod.numpy()
  save_file(state, path)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  return references.write_clip_vocab(tmp_path_factory.mktemp("clip"))


def _flat(directory: str, part: str) -> dict:
  tree = export.read(directory, part)
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _without_paths(config) -> dict:
  config = json.loads(config.to_json_best_effort())
  config["first_stage"].pop("path")
  config["init_from"] = None
  for key in ("tokenizer", "text_encoder", "pad"):
    config["conditioning"].pop(key)
  return config


@pytest.mark.slow
@pytest.mark.parity
@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_converted_pipeline_samples_like_diffusers(family, clip_dir, tmp_path):
  pipe = diffusers_pipeline(family, clip_dir)
  folder, single = str(tmp_path / "diffusers"), str(tmp_path / "sd.safetensors")
  pipe.save_pretrained(folder, safe_serialization=True)
  _single_file(family, pipe, single)
  prediction = "v" if family == "sd2" else None
  from_file = pipeline.convert(single, str(tmp_path / "from_file"),
                               tokenizer=os.path.join(folder, "tokenizer"),
                               prediction=prediction)
  from_folder = pipeline.convert(folder, str(tmp_path / "from_folder"))
  # One model either way: the same parameters, bit for bit, and the same settings.
  for part in ("network", "autoencoder", "conditioner"):
    a, b = _flat(str(tmp_path / "from_file"), part), _flat(str(tmp_path / "from_folder"), part)
    assert a.keys() == b.keys(), part
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=f"{part} {key}")
  assert from_file.conditioner.depth == TEXT_LAYERS + (family == "sd2")
  assert from_folder.conditioner.depth == TEXT_LAYERS
  file_config, folder_config = _without_paths(from_file), _without_paths(from_folder)
  file_config["conditioner"].update(depth=TEXT_LAYERS, output_layer=-1)  # SD 2: 3 blocks, -2.
  assert file_config == folder_config
  assert from_file.diffusion.prediction == ("v" if family == "sd2" else "eps")

  model = sampling.load(checkpoint=str(tmp_path / "from_file"), devices=jax.devices()[:2])
  latent = (HEIGHT // 2, WIDTH // 2)
  noise = model.noise(0, np.arange(len(PROMPTS)), latent)
  for kind, sampler in (("ddim", "ddim"), ("dpm", "dpm_solver++")):
    ours = model.sample(len(PROMPTS), prompt=PROMPTS, negative_prompt=NEGATIVE, height=HEIGHT,
                        width=WIDTH, sampler=sampler, steps=STEPS, guidance_scale=7.5, seed=0)
    pipe.scheduler = _scheduler(kind, SHAPES[family]["prediction"])
    with torch.no_grad():
      theirs = pipe(PROMPTS, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH,
                    num_inference_steps=STEPS, guidance_scale=7.5, output_type="np",
                    latents=torch.from_numpy(noise.transpose(0, 3, 1, 2).copy())).images
    theirs = np.round(theirs * 255.0)
    assert ours.images.shape == theirs.shape == (len(PROMPTS), HEIGHT, WIDTH, 3)
    diff = np.abs(ours.images.astype(np.float64) - theirs)
    inside = np.mean((theirs > 0) & (theirs < 255))
    print(f"{family} {sampler}: max |ours - diffusers| = {diff.max():.0f} uint8 levels "
          f"({np.mean(diff > 0):.2%} of pixels differ; {inside:.0%} unsaturated)")
    assert inside > 0.5  # The images carry information, not saturated noise.
    assert diff.max() <= 1.0
    assert ours.settings["height"] == HEIGHT and ours.settings["width"] == WIDTH
    assert ours.settings["negative_prompt"] == NEGATIVE
  # The comparison sees the text: without the negative prompts diffusers' images move.
  with torch.no_grad():
    plain = pipe(PROMPTS, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                 guidance_scale=7.5, output_type="np",
                 latents=torch.from_numpy(noise.transpose(0, 3, 1, 2).copy())).images
  moved = np.abs(np.round(plain * 255.0) - ours.images).max()
  print(f"{family}: without the negative prompts, up to {moved:.0f} levels away")
  assert moved > 8


@pytest.fixture(scope="module")
def converted_sd1(clip_dir, tmp_path_factory):
  """(a tiny SD-1-shaped single file, its conversion)."""
  folder = tmp_path_factory.mktemp("sd1")
  single = str(folder / "sd.safetensors")
  _single_file("sd1", diffusers_pipeline("sd1", clip_dir), single)
  pipeline.convert(single, str(folder / "converted"), tokenizer=clip_dir)
  return single, str(folder / "converted")


def test_fine_tuning_recipe_starts_from_the_converted_pipeline(converted_sd1):
  """configs/stable_diffusion.py:pipeline=DIR takes the pipeline's architectures, VAE,
  tokenizer and frozen text encoder, and its UNet is where the run starts (EMA too)."""
  from ldm_jax.recipes import stable_diffusion  # pylint: disable=import-outside-toplevel
  from ldm_jax.training import stages  # pylint: disable=import-outside-toplevel
  _, converted = converted_sd1
  config = stable_diffusion.get_config(f"pipeline={converted}")
  assert config.network.model_channels == 32 and config.conditioner.width == TEXT_WIDTH
  assert config.init_from == config.first_stage.path == config.conditioning.text_encoder
  stage = stages.create(config)
  state = jax.jit(stage.init_state)(jax.random.key(0), **stage.init_inputs)
  expected = _flat(converted, "network")
  for tree in (state.params, state.ema_params):
    got = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
           jax.tree_util.tree_flatten_with_path(tree["model"]["network"])[0]}
    assert got.keys() == expected.keys()
    for key in got:
      np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
  assert "conditioner" not in state.params["model"]  # Frozen: held by the mode.
  with pytest.raises(ValueError, match="pass model=ldm_txt2img for LDM txt2img"):
    stable_diffusion.get_config(f"model=ldm_txt2img,pipeline={converted}")


def test_pipeline_conversion_errors(clip_dir, converted_sd1, tmp_path):
  single, converted = converted_sd1
  with pytest.raises(ValueError, match="holds no tokenizer: pass tokenizer=DIR, CLIP's"):
    pipeline.convert(single, str(tmp_path / "a"))
  vocab_txt = tmp_path / "vocab.txt"
  vocab_txt.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n")
  with pytest.raises(ValueError, match="vocab.txt"):  # WordPiece files for a CLIP encoder.
    pipeline.convert(single, str(tmp_path / "b"), tokenizer=str(vocab_txt))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="vocab.json"):
    pipeline.convert(single, str(tmp_path / "c"), tokenizer=str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="prediction='x0'"):
    pipeline.convert(single, str(tmp_path / "d"), tokenizer=clip_dir, prediction="x0")
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  state = load_file(single)
  # A class-conditional LDM's file: no text encoder of a known family.
  classes = {k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}
  classes["cond_stage_model.embedding.weight"] = np.zeros((10, 128), np.float32)
  save_file(classes, str(tmp_path / "cin.safetensors"))
  with pytest.raises(ValueError, match="not a text-to-image checkpoint of a known family"):
    pipeline.convert(str(tmp_path / "cin.safetensors"), str(tmp_path / "e"), tokenizer=clip_dir)
  # A UNet that attends to another width than the text encoder gives.
  narrow = dict(state)
  for key in [k for k in state if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]:
    narrow[key] = state[key][:, :64]
  save_file(narrow, str(tmp_path / "narrow.safetensors"))
  with pytest.raises(ValueError, match="width is 128 but the UNet attends to a context of 64"):
    pipeline.convert(str(tmp_path / "narrow.safetensors"), str(tmp_path / "f"),
                     tokenizer=clip_dir)
  # An inpainting UNet (the masked image's latents and the mask concatenated).
  inpainting = dict(state)
  key = "model.diffusion_model.input_blocks.0.0.weight"
  inpainting[key] = np.concatenate([state[key], state[key], state[key][:, :1]], axis=1)
  save_file(inpainting, str(tmp_path / "inpainting.safetensors"))
  with pytest.raises(ValueError, match="takes 9 and gives 4 channels.*an inpainting"):
    pipeline.convert(str(tmp_path / "inpainting.safetensors"), str(tmp_path / "h"),
                     tokenizer=clip_dir)
  # A half-precision file stores the schedule rounded to float16: still Stable Diffusion's.
  pipeline._check_stored_schedule(  # pylint: disable=protected-access
      {"alphas_cumprod": state["alphas_cumprod"].astype(np.float16)}, "fp16 file")
  # Another schedule than Stable Diffusion's.
  shifted = dict(state, alphas_cumprod=state["alphas_cumprod"] * 0.9)
  save_file(shifted, str(tmp_path / "shifted.safetensors"))
  with pytest.raises(ValueError, match="differ from Stable Diffusion's schedule"):
    pipeline.convert(str(tmp_path / "shifted.safetensors"), str(tmp_path / "g"),
                     tokenizer=clip_dir)
  assert sorted(os.listdir(os.path.join(converted, "tokenizer"))) == ["merges.txt",
                                                                      "vocab.json"]
  assert not os.path.exists(converted + ".incomplete")
  with pytest.raises(FileExistsError, match="never written over"):
    pipeline.convert(single, converted, tokenizer=clip_dir)
  # vocab.json names its folder, as for the tokenizer itself: both files are copied.
  pipeline.convert(single, str(tmp_path / "i"), tokenizer=os.path.join(clip_dir, "vocab.json"))
  assert sorted(os.listdir(tmp_path / "i" / "tokenizer")) == ["merges.txt", "vocab.json"]
  (tmp_path / "j.incomplete").mkdir()  # What an interrupted conversion leaves.
  with pytest.raises(FileExistsError, match="j.incomplete exists: a conversion into"):
    pipeline.convert(single, str(tmp_path / "j"), tokenizer=clip_dir)
  assert not (tmp_path / "j").exists()
  model = sampling.load(checkpoint=converted)
  assert model.config.data.image_size == 512 and model.config.sampling.guidance_scale == 7.5
  with pytest.raises(ValueError, match="height: the output would be 34 px, which must be a "
                     "multiple of 4"):
    model.sample(1, prompt="a cat", height=34, width=32)
  with pytest.raises(ValueError, match="width=0: expected a positive number of pixels"):
    model.sample(1, prompt="a cat", height=32, width=0)


@pytest.mark.parity
def test_ldm_txt2img_single_file_converts_with_its_bert_encoder(tmp_path):
  """LDM txt2img-1p4B's layout (x-transformers BERTEmbedder, 8 heads of 64, context = its
  width) at tiny size: the family, architecture and tokenizer are found, the encoder equals
  x-transformers' on the tokenizer's ids, and the pipeline samples from a prompt."""
  x_transformers = references.require("x_transformers")
  width = 64
  bert = x_transformers.TransformerWrapper(num_tokens=100, max_seq_len=77,
                                           attn_layers=x_transformers.Encoder(dim=width, depth=2))
  ref.randomize(bert, seed=2)
  bert.eval()
  torch.manual_seed(0)
  unet = diffusers.UNet2DConditionModel(
      sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
      cross_attention_dim=width, attention_head_dim=8, norm_num_groups=32)
  vae = diffusers.AutoencoderKL(
      block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=32,
      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
  state = ref.compvis_unet_state(types.SimpleNamespace(
      attention_resolutions=(1,), channel_mult=(1, 2), num_res_blocks=1), unet)
  state.update(ref.compvis_autoencoder_state(types.SimpleNamespace(ch_mult=(1, 2)), vae))
  state.update({f"cond_stage_model.transformer.{k}": v.numpy()
                for k, v in bert.state_dict().items()})
  path = str(tmp_path / "txt2img-1p4B-tiny.ckpt.safetensors")
  save_file(state, path)
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red",
                              "car", "photo", "of", "##s"]) + "\n")
  out = str(tmp_path / "converted")
  config = pipeline.convert(path, out, tokenizer=str(vocab))
  assert config.conditioning.type == "text" and config.conditioner.type == "text"
  assert (config.conditioner.width, config.conditioner.depth, config.conditioner.heads,
          config.conditioner.head_dim) == (width, 2, 8, 64)
  assert config.network.num_heads == 8 and config.network.context_dim == width
  assert config.sampling.guidance_scale == 5.0 and config.diffusion.prediction == "eps"
  model = sampling.load(checkpoint=out, devices=jax.devices()[:1])
  tokens = model.cond.tokenize(["a photo of red cars"])
  assert tokens[0, :8].tolist() == [2, 5, 8, 9, 6, 7, 10, 3]  # [CLS] .. car ##s [SEP].
  params = model._params["conditioner"]  # pylint: disable=protected-access
  ours = model.cond.module.apply({"params": params}, tokens)
  with torch.no_grad():
    theirs = bert(torch.from_numpy(tokens.astype(np.int64)), return_embeddings=True).numpy()
  assert ref.relative_error(ours, theirs) <= 1e-5
  images = model.sample(1, prompt="a red car", height=16, width=16, steps=2).images
  assert images.shape == (1, 16, 16, 3)


def _shapes(shapes: dict) -> dict:
  """A state dict of zero-memory arrays with these shapes (architecture inference reads
  shapes only)."""
  return {k: np.broadcast_to(np.float32(0), v) for k, v in shapes.items()}


def test_sd2_text_encoder_files_with_23_or_24_blocks_are_one_architecture():
  """Files re-saved from diffusers hold ViT-H/14's text tower without its last block (SD 2
  never runs it); both layouts give the 24-block tower read at its penultimate block."""
  from ldm_jax.convert import infer  # pylint: disable=import-outside-toplevel
  p = "cond_stage_model.model."
  for blocks in (23, 24):
    state = _shapes({f"{p}token_embedding.weight": (49408, 1024),
                     f"{p}positional_embedding": (77, 1024),
                     **{f"{p}transformer.resblocks.{i}.mlp.c_fc.weight": (4096, 1024)
                        for i in range(blocks)}})
    block = infer.text_encoder_block(state, "sd2", "sd2.safetensors")
    assert (block.depth, block.output_layer, block.heads, block.activation) == (
        24, -2, 16, "gelu")
  wide = _shapes({"cond_stage_model.transformer.text_model.embeddings.token_embedding."
                  "weight": (49408, 1024)})
  with pytest.raises(ValueError, match="1024-wide text encoder .* in transformers' names"):
    infer.text_encoder_block(wide, "sd1", "odd.safetensors")


def test_autoencoder_inference_reads_embed_dim_and_z_channels_apart():
  from ldm_jax.convert import infer  # pylint: disable=import-outside-toplevel
  p = "first_stage_model."
  state = _shapes({f"{p}encoder.conv_in.weight": (32, 3, 3, 3),
                   f"{p}encoder.down.0.block.0.conv2.weight": (32, 32, 3, 3),
                   f"{p}encoder.down.1.block.0.conv2.weight": (64, 64, 3, 3),
                   f"{p}decoder.conv_out.weight": (3, 32, 3, 3),
                   f"{p}decoder.conv_in.weight": (64, 8, 3, 3),
                   f"{p}post_quant_conv.weight": (8, 4, 1, 1)})
  block = infer.autoencoder_block(state, "vae.safetensors")
  assert (block.z_channels, block.embed_dim, block.ch_mult, block.num_res_blocks) == (
      8, 4, (1, 2), 1)
