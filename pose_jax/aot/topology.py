"""Cloud TPU topologies for ahead-of-time compiles from a CPU host: user-facing names
(``v5p-64``, ``v6e-256``, ...) -> ``jax.experimental.topologies.get_topology_desc`` arguments,
per-device HBM and peak FLOP/s, and the config's mesh laid out on the topology's devices.

Names: ``v4-N`` and ``v5p-N`` (N TensorCores, 2 per chip, one megacore device per chip),
``v5e-N`` and ``v6e-N`` (N chips), ``tpu7x-N`` (N TensorCores, 2 per chip, each its own device).
"""

from __future__ import annotations

import dataclasses
import re

from jax.experimental import mesh_utils, topologies
from jax.sharding import AxisType, Mesh

from pose_jax import sharding as shd


@dataclasses.dataclass(frozen=True)
class Chip:
  kind: str
  hbm_gib: float  # usable HBM per JAX device (libtpu's limit, what RESOURCE_EXHAUSTED reports)
  peak_tflops: float  # dense bf16 per JAX device
  devices_per_chip: int  # JAX devices per chip
  cores_in_name: bool  # the user-facing N counts TensorCores (2 per chip), not chips
  chip_config: str
  dims: int  # torus dimensions
  hbm_gb_s: float  # HBM bandwidth per JAX device, GB/s (1e9 bytes)


# Peak bf16 per chip (Cloud TPU docs): v4 275, v5e 197, v5p 459, v6e 918, tpu7x (Ironwood) 2307
# TF/s. Usable HBM per device is libtpu's limit as its RESOURCE_EXHAUSTED messages state it
# (v5e 15.75G and v5p 95.74G seen here; v4 and v6e from libtpu reports seen elsewhere); tpu7x's
# (192 GB per chip, 2 devices) is an unverified estimate. HBM bandwidth per chip (Cloud TPU
# docs): v4 1228, v5e 819, v5p 2765, v6e 1640, tpu7x 7370 GB/s (halved per tpu7x device).
CHIPS = {
  "v4": Chip("v4", 30.75, 275.0, 1, True, "megacore", 3, 1228.0),
  "v5p": Chip("v5", 95.74, 459.0, 1, True, "megacore", 3, 2765.0),
  "v5e": Chip("v5e", 15.75, 197.0, 1, False, "default", 2, 819.0),
  "v6e": Chip("v6e", 31.25, 918.0, 1, False, "default", 2, 1640.0),
  "tpu7x": Chip("tpu7x", 94.75, 2307.0 / 2, 2, True, "default", 3, 7370.0 / 2),
}
# chips -> physical grid (MaxText's accelerator_to_spec_map / GKE topologies).
GRIDS_3D = {
  4: (2, 2, 1),
  8: (2, 2, 2),
  16: (2, 2, 4),
  32: (2, 4, 4),
  64: (4, 4, 4),
  128: (4, 4, 8),
  256: (4, 8, 8),
  512: (8, 8, 8),
  1024: (8, 8, 16),
  2048: (8, 16, 16),
  4096: (16, 16, 16),
}
GRIDS_2D = {
  1: (1, 1),
  4: (2, 2),
  8: (2, 4),
  16: (4, 4),
  32: (4, 8),
  64: (8, 8),
  128: (8, 16),
  256: (16, 16),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str
  chip: Chip
  topology_name: str
  chips: int
  wrap: tuple[bool, bool, bool]
  host_bounds: tuple[int, int, int]

  @property
  def devices(self) -> int:
    return self.chips * self.chip.devices_per_chip

  @property
  def hosts(self) -> int:
    return max(1, self.chips // (self.host_bounds[0] * self.host_bounds[1] * self.host_bounds[2]))


def known_topologies() -> list[str]:
  names = []
  for gen, chip in CHIPS.items():
    grids = GRIDS_3D if chip.dims == 3 else GRIDS_2D
    names += [f"{gen}-{c * (2 if chip.cores_in_name else 1)}" for c in grids]
  return names


def parse_topology(name: str) -> Topology:
  """``v5p-64`` -> the arguments of ``get_topology_desc``; unknown names list the known ones."""
  m = re.fullmatch(r"(v4|v5p|v5e|v6e|tpu7x)-(\d+)", name.strip().lower())
  chip = CHIPS.get(m.group(1)) if m else None
  n = int(m.group(2)) if m else 0
  chips = n // 2 if chip and chip.cores_in_name else n
  grids = (GRIDS_3D if chip.dims == 3 else GRIDS_2D) if chip else {}
  if chip is None or chips not in grids or (chip.cores_in_name and n % 2):
    raise ValueError(f"unknown topology {name!r}; known: {', '.join(known_topologies())}")
  grid = grids[chips]
  if chip.dims == 3:
    wrap = (True, True, True) if chips >= 64 else (False, False, False)
  else:
    wrap = {128: (False, True, False), 256: (True, True, False)}.get(chips, (False, False, False))
  bounds = (1, 1, 1) if chips == 1 else (2, 2, 1)
  return Topology(name, chip, f"{chip.kind}:{'x'.join(map(str, grid))}", chips, wrap, bounds)


def topology_devices(topo: Topology, slices: int = 1):
  """The devices of ``slices`` slices of the topology as libtpu describes them (compile
  targets, not attached chips; each has its ``slice_index``)."""
  desc = topologies.get_topology_desc(
    platform="tpu",
    topology_name=topo.topology_name,
    chip_config_name=topo.chip.chip_config,
    chips_per_host_bounds=topo.host_bounds,
    num_slices=slices,
    wrap=topo.wrap,
  )
  return list(desc.devices)


def make_mesh(shape, devices, slices: int = 1):
  """The config's ``MESH_AXES`` mesh over the topology's devices, laid out on the physical torus
  (``mesh_utils.create_device_mesh``; with several slices ``create_hybrid_device_mesh``, the
  slices along ``data``), axis types Auto like :func:`pose_jax.sharding.make_mesh`."""
  sizes = tuple(shd.resolve_mesh_shape(shape, len(devices), slices).values())
  per_slice = (sizes[0] // slices, *sizes[1:])
  try:
    if slices == 1:
      grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    else:
      dcn = (slices,) + (1,) * (len(sizes) - 1)
      grid = mesh_utils.create_hybrid_device_mesh(
        per_slice, dcn, devices, allow_split_physical_axes=True
      )
  except (ValueError, NotImplementedError, AssertionError):
    grid = shd.device_grid(shape, devices, slices)
  return Mesh(grid, shd.MESH_AXES, axis_types=(AxisType.Auto,) * len(shd.MESH_AXES))
