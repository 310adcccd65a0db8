"""The known LDM / Stable Diffusion architectures, as model config blocks.

Each function returns the ConfigDict that `ldm_jax.models.factory` builds; experiment configs
use them as `config.network = architectures.sd_v1_unet()`. As a config file it selects one:
`--config=configs/architectures.py:sd_v1_unet` (a `network`, `autoencoder` or `conditioner`
block).
"""

import ml_collections

# Execution settings every model block carries, overridable on the command line, e.g.
# --config.network.dtype=bfloat16 --config.network.attention_impl=cudnn
# --config.network.remat=dots (a named policy: ldm_jax/nn/remat.py)
EXECUTION = dict(dtype="float32", param_dtype="float32", remat="none", attention_impl="auto")


def _unet(**kw) -> ml_collections.ConfigDict:
  base = dict(type="unet", in_channels=4, out_channels=4, model_channels=320,
              channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_resolutions=(4, 2, 1),
              num_heads=8, num_head_channels=-1, use_spatial_transformer=True,
              transformer_depth=1, context_dim=768, linear_projection=False, num_classes=None,
              scale_shift=False, dropout=0.0, **EXECUTION)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _autoencoder(kind: str, **kw) -> ml_collections.ConfigDict:
  base = dict(type=kind, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, attn_resolutions=(),
              resolution=256, in_channels=3, out_ch=3, z_channels=4, embed_dim=4,
              dropout=0.0, **EXECUTION)
  if kind == "vq":
    base.update(n_embed=8192, beta=0.25)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def sd_v1_unet():
  """Stable Diffusion 1.x: 8 heads, CLIP ViT-L/14 context (768)."""
  return _unet()


def sd_v2_unet():
  """Stable Diffusion 2.x: 64-channel heads, linear projections, OpenCLIP-H context (1024)."""
  return _unet(num_heads=-1, num_head_channels=64, linear_projection=True, context_dim=1024)


def ldm_cin256_v2_unet():
  """LDM class-conditional ImageNet 256 (cin256-v2): on vq-f4 latents, class via context."""
  return _unet(in_channels=3, out_channels=3, model_channels=192, channel_mult=(1, 2, 3, 5),
               attention_resolutions=(8, 4, 2), num_heads=1, context_dim=512)


def ldm_txt2img_unet():
  """LDM txt2img-1p4B (LDM-KL-8-G): SD 1's UNet attending to its BERT encoder's 1280-wide
  context."""
  return _unet(context_dim=1280)


def ldm_celebahq256_unet():
  """LDM unconditional CelebA-HQ 256: on vq-f4 latents, plain self-attention."""
  return _unet(in_channels=3, out_channels=3, model_channels=224, channel_mult=(1, 2, 3, 4),
               attention_resolutions=(8, 4, 2), num_heads=-1, num_head_channels=32,
               use_spatial_transformer=False, context_dim=None)


def sd_kl_f8():
  """The Stable Diffusion VAE (kl-f8, 4 latent channels)."""
  return _autoencoder("kl")


def kl_f4(**overrides):
  """LDM's kl-f4 (3 latent channels, three levels)."""
  return _autoencoder("kl", **{**dict(ch_mult=(1, 2, 4), z_channels=3, embed_dim=3),
                               **overrides})


def vq_f4():
  """LDM's vq-f4 (3 latent channels, 8192 codes)."""
  return _autoencoder("vq", ch_mult=(1, 2, 4), z_channels=3, embed_dim=3)


def ldm_cin256_v2_class_embedder():
  """LDM cin256-v2's conditioner: 1,000 ImageNet classes -> a 512-wide context token.

  The released checkpoint has no null-class row; set add_null_class=True to train with
  classifier-free guidance.
  """
  return ml_collections.ConfigDict(dict(type="class", num_classes=1000, embed_dim=512,
                                        add_null_class=False))


def _clip_text(**kw) -> ml_collections.ConfigDict:
  base = dict(type="clip", vocab_size=49408, max_length=77, width=768, depth=12, heads=12,
              mlp_width=3072, activation="quick_gelu", output_layer=-1, final_norm=True,
              causal=True, attention_impl="auto", dtype="float32", param_dtype="float32")
  base.update(kw)
  return ml_collections.ConfigDict(base)


def sd_v1_text_encoder():
  """Stable Diffusion 1.x's frozen text encoder: OpenAI CLIP ViT-L/14's text tower
  (123.06M parameters); the context is its last layer after the final LayerNorm."""
  return _clip_text()


def sd_v2_text_encoder():
  """Stable Diffusion 2.x's: OpenCLIP ViT-H/14's text tower (24 blocks of 1024, exact
  GELU); the context is the penultimate block's output through the final LayerNorm, so 23
  blocks are built (340.39M parameters, as diffusers' 23-layer CLIPTextModel)."""
  return _clip_text(width=1024, depth=24, heads=16, mlp_width=4096, activation="gelu",
                    output_layer=-2)


def ldm_bert():
  """LDM txt2img-1p4B's BERTEmbedder: 32 pre-LayerNorm blocks of width 1280 with 8 heads
  of 64 (inner width 512), bert-base-uncased's 30522 WordPiece tokens, 77 positions, no
  attention mask; trained jointly with the UNet (conditioning.type='text')."""
  return ml_collections.ConfigDict(dict(
      type="text", vocab_size=30522, max_length=77, width=1280, depth=32, heads=8,
      head_dim=64, mlp_ratio=4, dropout=0.0, attention_impl="auto", dtype="float32",
      param_dtype="float32"))


UNETS = {f.__name__: f for f in (sd_v1_unet, sd_v2_unet, ldm_txt2img_unet,
                                 ldm_cin256_v2_unet, ldm_celebahq256_unet)}
AUTOENCODERS = {f.__name__: f for f in (sd_kl_f8, kl_f4, vq_f4)}
CONDITIONERS = {f.__name__: f for f in (ldm_cin256_v2_class_embedder, sd_v1_text_encoder,
                                        sd_v2_text_encoder, ldm_bert)}


def get_config(arg=None):
  blocks = {"network": UNETS, "autoencoder": AUTOENCODERS, "conditioner": CONDITIONERS}
  names = sorted(name for table in blocks.values() for name in table)
  if arg not in names:
    raise ValueError(f"configs/architectures.py:{arg}: choose one of {names}.")
  config = ml_collections.ConfigDict()
  for block, table in blocks.items():
    if arg in table:
      config[block] = table[arg]()
  return config
