"""Networks by type: the spec the rest of the library reads, building, example inputs, and
the migration of configs written with `config.unet`."""

import jax
import ml_collections
import pytest

from configs import architectures
from configs import digits_ldm
from ldm_jax.models import networks


def test_unet_spec_and_example_inputs_match_the_built_module():
  block = architectures.sd_v1_unet()
  spec = networks.spec(block)
  assert (spec.type, spec.in_channels, spec.out_channels, spec.context_dim,
          spec.num_classes, spec.size_multiple) == ("unet", 4, 4, 768, None, 8)
  small = digits_ldm.get_config("tiny,class_input=embedding").network
  x, t, context, y = networks.example_inputs(small)
  # The smallest input the network takes: 1 px for the tiny one-level UNet.
  assert networks.spec(small).size_multiple == 1
  assert x.shape == (1, 1, 1, small.in_channels) and context is None and y.shape == (1,)
  params = networks.build(small).init(jax.random.key(0), x, t, context, y)["params"]
  out = networks.build(small).apply({"params": params}, x, t, context, y)
  assert out.shape == x.shape[:3] + (small.out_channels,)
  # A UNet without spatial transformers attends to no context, whatever context_dim says.
  block.use_spatial_transformer = False
  assert networks.spec(block).context_dim is None


def test_unknown_type_and_settings_are_refused():
  block = architectures.sd_v1_unet()
  block.type = "uvit3"
  with pytest.raises(ValueError, match=r"network.type='uvit3': expected one of \('unet', 'uvit'\)"):
    networks.spec(block)
  with pytest.raises(ValueError, match="network.type='uvit3'"):
    networks.build(block)


def test_configs_with_a_unet_block_are_migrated_to_a_copy():
  config = digits_ldm.get_config("tiny")
  old = config.copy_and_resolve_references()
  with old.unlocked():
    old.unet = old.network.copy_and_resolve_references()
    del old.unet["type"]
    del old["network"]
  old.optimizer.frozen = ("^unet/time_embedding/", "unet/down_blocks_0/", "^conditioner/")
  new = networks.migrate_config(old)
  assert "unet" in old and "network" not in old  # The caller's config is left as it was.
  assert "unet" not in new and new.network.to_dict() == config.network.to_dict()
  assert tuple(new.optimizer.frozen) == ("^network/time_embedding/", "network/down_blocks_0/",
                                         "^conditioner/")
  assert networks.migrate_config(config) is config  # Today's layout passes through.
  both = old.copy_and_resolve_references()
  both.network = config.network
  with pytest.raises(ValueError, match="both `unet` .* and `network`"):
    networks.migrate_config(both)


def test_the_spec_reports_dropout():
  block = digits_ldm.get_config("tiny").network
  assert networks.spec(block).dropout == 0.0
  block.dropout = 0.1
  assert networks.spec(block).dropout == 0.1
