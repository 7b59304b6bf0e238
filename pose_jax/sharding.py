"""Logical axis names, the rules table that maps them to mesh axes, and abstract-first creation.

Mesh axes are always the four ``MESH_AXES`` (size 1 where unused):
  data    pure data parallelism (params replicated)
  fsdp    data parallelism with params/optimizer state sharded over it (ZeRO-3 style)
  context sequence (video-token) parallelism
  tensor  Megatron-style tensor parallelism over heads / FFN width

Parameters are annotated with the logical names below where they are created; activations are
constrained with :func:`constrain` only at block boundaries and around attention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.sharding import AxisType, Mesh
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "context", "tensor")

# Parameter axes.
LAYERS = "layers"  # stacked (scanned) layer dimension
EMBED = "embed"  # model width D
HEADS = "heads"  # attention projections, N*K
MLP = "mlp"  # FFN width F
MOD = "mod"  # modulation chunks (6 or 2)
COND = "cond"  # input widths of conditioning embedders (text, image, freq, patch)
OUT = "out"  # output projection width
LORA = "lora"  # LoRA rank
# Activation axes.
ACT_BATCH = "act_batch"
ACT_LENGTH = "act_length"  # video tokens
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_KV = "act_kv"  # keys/values of attention (gathered for context parallelism)

# logical name -> mesh axes. Order of the table is the documentation.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  (LAYERS, None),
  (EMBED, "fsdp"),
  (HEADS, "tensor"),
  (MLP, "tensor"),
  (MOD, None),
  (COND, None),
  (OUT, None),
  (LORA, None),
  (ACT_BATCH, ("data", "fsdp")),
  (ACT_LENGTH, "context"),
  (ACT_EMBED, None),
  (ACT_HEADS, "tensor"),
  (ACT_KV, None),
)


def current_rules():
  """The rules in force: a ``with axis_rules(...)`` block, else :data:`RULES`."""
  return spmd.get_logical_axis_rules() or RULES


def axis_rules(rules=RULES):
  """Context manager setting the logical->mesh rules (flax's own rules context)."""
  return nnx.logical_axis_rules(rules)


def logical_to_spec(names: Sequence[str | None], rules=None) -> P:
  """Maps logical axis names to a mesh ``PartitionSpec``; unknown names are an error."""
  table = dict(rules or current_rules())
  out = []
  for name in names:
    if name is None:
      out.append(None)
    elif name in table:
      out.append(table[name])
    else:
      raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
  return P(*out)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """``with_sharding_constraint`` by logical names; a no-op when no mesh is set."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> dict[str, int]:
  """``{axis: size}`` for a ``MESH_AXES`` shape; -1 in one place takes the remaining devices."""
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
  if -1 in shape:
    rest = int(np.prod([s for s in shape if s != -1]))
    if rest <= 0 or num_devices % rest:
      raise ValueError(f"mesh shape {shape} does not divide {num_devices} devices")
    shape[shape.index(-1)] = num_devices // rest
  if any(s < 1 for s in shape) or int(np.prod(shape)) != num_devices:
    raise ValueError(
      f"mesh shape {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, "
      f"have {num_devices}"
    )
  return dict(zip(MESH_AXES, shape))


def make_mesh(shape: Sequence[int], devices=None) -> Mesh:
  """A ``MESH_AXES`` mesh of the given shape (see :func:`resolve_mesh_shape`)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_mesh_shape(shape, len(devices))
  return Mesh(
    np.array(devices).reshape(tuple(sizes.values())),
    MESH_AXES,
    axis_types=(AxisType.Auto,) * len(MESH_AXES),
  )


def abstract_model(make_model: Callable[[], nnx.Module], mesh: Mesh, rules=RULES):
  """``(graphdef, abstract_state)``: ShapeDtypeStructs carrying their NamedShardings.

  Nothing is allocated; this is also the orbax restore target.
  """
  with axis_rules(rules):
    return nnx.get_abstract_model(make_model, mesh)


def create_sharded(make_model: Callable[[], nnx.Module], mesh: Mesh, rules=RULES) -> nnx.Module:
  """Builds a model with every parameter created directly in its final sharding.

  ``make_model`` takes no arguments and builds the model (with its own ``nnx.Rngs``). The model
  is traced abstractly first; initialisation then runs under ``jit`` with the derived
  ``out_shardings``, so no device ever holds an unsharded copy.
  """
  graphdef, abstract = abstract_model(make_model, mesh, rules)
  shardings = jax.tree.map(lambda a: a.sharding, abstract)

  def init():
    return nnx.state(make_model())

  with jax.set_mesh(mesh), axis_rules(rules):
    state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def state_shardings(state, mesh: Mesh, rules=RULES):
  """NamedShardings for an nnx state from its logical annotations."""
  with axis_rules(rules):
    return nnx.get_named_sharding(state, mesh)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=RULES):
  """Mesh + rules context for tracing sharded computations."""
  with jax.set_mesh(mesh), axis_rules(rules):
    yield mesh
