"""Mesh construction over the 8 virtual CPU devices."""

import jax
import pytest

from configs import common
from ldm_jax.parallel import sharding


def _mesh_config(**sizes):
  config = common.mesh_config()
  config.update(sizes)
  return config


def test_default_mesh_uses_all_devices_for_data():
  mesh = sharding.create_mesh()
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1}
  assert sharding.num_batch_shards(mesh) == 8


def test_fill_axis():
  assert dict(sharding.create_mesh(_mesh_config(data=-1, fsdp=4)).shape) == {
      "data": 2, "fsdp": 4}


@pytest.mark.parametrize("sizes,message", [
    ({"data": 3}, "multiple of 3 devices, but there are 8"),
    ({"data": -1, "fsdp": -1}, "at most one axis may be -1"),
    ({"data": 0}, "mesh.data=0"),
    ({"data": 2, "fsdp": 2}, "= 4 devices, but there are 8"),
])
def test_bad_meshes(sizes, message):
  with pytest.raises(ValueError, match=message):
    sharding.create_mesh(_mesh_config(**sizes))


def test_batch_sharding_spec():
  spec = sharding.batch_sharding(sharding.create_mesh()).spec
  assert spec == jax.sharding.PartitionSpec(("data", "fsdp"))
