"""The device mesh (axes `data` x `fsdp`) and the sharding of input batches over it."""

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# The batch dimension is split over both axes: fsdp shards parameters *and* data.
BATCH_AXES = ("data", "fsdp")


def create_mesh(mesh_config: ml_collections.ConfigDict | None = None,
                devices=None) -> Mesh:
  """Builds a (data, fsdp) mesh over all devices; a size of -1 takes what is left."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = {"data": -1, "fsdp": 1}
  if mesh_config is not None:
    sizes.update({axis: int(mesh_config[axis]) for axis in BATCH_AXES if axis in mesh_config})
  fixed = 1
  for axis, size in sizes.items():
    if size == 0 or size < -1:
      raise ValueError(f"mesh.{axis}={size}: expected a positive size or -1 (fill).")
    fixed *= max(size, 1)
  if list(sizes.values()).count(-1) > 1:
    raise ValueError(f"mesh={sizes}: at most one axis may be -1.")
  if len(devices) % fixed:
    raise ValueError(f"mesh={sizes} needs a multiple of {fixed} devices, but there are "
                     f"{len(devices)}.")
  shape = tuple(len(devices) // fixed if s == -1 else s for s in sizes.values())
  if shape[0] * shape[1] != len(devices):
    raise ValueError(f"mesh data={shape[0]} x fsdp={shape[1]} = {shape[0] * shape[1]} "
                     f"devices, but there are {len(devices)}; set one axis to -1.")
  return jax.make_mesh(shape, BATCH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(BATCH_AXES),
                       devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def num_batch_shards(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 4096) -> PartitionSpec:
  """Shards an array's largest dimension that fsdp divides over `fsdp`; small arrays (and
  those with no divisible dimension) are replicated."""
  size = 1
  for d in shape:
    size *= d
  if fsdp_size <= 1 or size < min_size:
    return PartitionSpec()
  for dim in sorted(range(len(shape)), key=lambda i: -shape[i]):
    if shape[dim] % fsdp_size == 0:
      return PartitionSpec(*[("fsdp" if i == dim else None) for i in range(len(shape))])
  return PartitionSpec()


def tree_shardings(abstract_tree, mesh: Mesh, min_size: int = 4096):
  """NamedShardings for a tree of arrays / ShapeDtypeStructs: fsdp_spec for each leaf.

  The same rule for parameters, optimiser moments and EMA copies, so an update never moves
  data between devices beyond the fsdp all-gathers.
  """
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp, min_size)), abstract_tree)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
