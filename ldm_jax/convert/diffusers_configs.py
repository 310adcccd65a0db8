"""Our CompVis-style hyper-parameters as diffusers constructor arguments: the parity tests'
references and benchmark.py's --compare=diffusers models."""


def unet_heads(config: dict, channels: int) -> int:
  if config.get("num_head_channels", -1) > 0:
    return channels // config["num_head_channels"]
  return config["num_heads"]


def unet_condition_kwargs(c: dict) -> dict:
  """UNet2DConditionModel arguments for a UNet with SpatialTransformers."""
  levels = range(len(c["channel_mult"]))
  attend = [2**l in c["attention_resolutions"] for l in levels]
  widths = tuple(c["model_channels"] * m for m in c["channel_mult"])
  return dict(
      in_channels=c["in_channels"], out_channels=c["out_channels"],
      down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attend),
      up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D"
                           for a in reversed(attend)),
      block_out_channels=widths, layers_per_block=c["num_res_blocks"],
      # diffusers' attention_head_dim holds head *counts* for this model (a naming quirk).
      attention_head_dim=tuple(unet_heads(c, w) for w in widths),
      cross_attention_dim=c["context_dim"],
      transformer_layers_per_block=c.get("transformer_depth", 1),
      use_linear_projection=c.get("linear_projection", False),
      num_class_embeds=c.get("num_classes"),
      resnet_time_scale_shift="scale_shift" if c.get("scale_shift") else "default",
      norm_num_groups=c.get("groups", 32), flip_sin_to_cos=True, freq_shift=0)


def unet_2d_kwargs(c: dict) -> dict:
  """UNet2DModel arguments for a UNet with plain self-attention blocks (head channels)."""
  if c.get("num_head_channels", -1) <= 0:
    raise ValueError(f"unet.num_head_channels={c.get('num_head_channels')}: diffusers' "
                     f"UNet2DModel fixes the channels per head; set num_head_channels > 0 "
                     f"(instead of num_heads={c.get('num_heads')}).")
  levels = range(len(c["channel_mult"]))
  attend = [2**l in c["attention_resolutions"] for l in levels]
  return dict(
      in_channels=c["in_channels"], out_channels=c["out_channels"],
      down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attend),
      up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend)),
      block_out_channels=tuple(c["model_channels"] * m for m in c["channel_mult"]),
      layers_per_block=c["num_res_blocks"], attention_head_dim=c["num_head_channels"],
      num_class_embeds=c.get("num_classes"), norm_num_groups=c.get("groups", 32),
      norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0)


def autoencoder_kwargs(c: dict) -> dict:
  """AutoencoderKL / VQModel block arguments for our Encoder/Decoder hyper-parameters."""
  attend = [c["resolution"] // 2**l in c["attn_resolutions"]
            for l in range(len(c["ch_mult"]))]
  return dict(
      in_channels=c["in_channels"], out_channels=c["out_ch"],
      down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D"
                             for a in attend),
      up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D"
                           for a in reversed(attend)),
      block_out_channels=tuple(c["ch"] * m for m in c["ch_mult"]),
      layers_per_block=c["num_res_blocks"], norm_num_groups=32)
