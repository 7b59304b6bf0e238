"""Logical axis names, the rules table that maps them to mesh axes, and abstract-first creation.

Mesh axes are always the four ``MESH_AXES`` (size 1 where unused):
  data    pure data parallelism (params replicated)
  fsdp    data parallelism with params/optimizer state sharded over it (ZeRO-3 style)
  context sequence (video-token) parallelism; params/optimizer state are sharded over it too
          (the weight axis ``EMBED`` maps to (fsdp, context), as in MaxText's rules)
  tensor  Megatron-style tensor parallelism over heads / FFN width

Parameters are annotated with the logical names below where they are created (and are never
sharded eagerly: :func:`pose_jax.models.layers.param`); activations are constrained with
:func:`constrain`, by the activation tuples below, only at block boundaries and around attention.

Every model is built abstract first (:func:`abstract_state`: shapes and shardings, nothing
allocated; also the orbax restore target), then initialised straight into its sharding
(:func:`create_state`), so no device ever holds an unsharded copy. nnx filters (e.g.
``LoRAParam``) select part of a model's state: only that part is ever created.
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
ACT_HEADS_ALL = "act_heads_all"  # heads of Ulysses attention: split over tensor and context
# Activation axes of the tensors constrained in the models.
HIDDEN = (ACT_BATCH, ACT_LENGTH, ACT_EMBED)  # [B, L, D] the DiT's residual stream
QUERIES = (ACT_BATCH, ACT_LENGTH, ACT_HEADS, None)  # [B, L, N, K] queries, attention output
KEYS_VALUES = (ACT_BATCH, ACT_KV, ACT_HEADS, None)  # [B, S, N, K] keys and values
ULYSSES = (ACT_BATCH, None, ACT_HEADS_ALL, None)  # [B, L, N, K] whole sequence, fewer heads
TOKENS = (ACT_BATCH, None, None)  # [B, S, D] the text/image encoders' tokens

# logical name -> mesh axes. Order of the table is the documentation.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  (LAYERS, None),
  (EMBED, ("fsdp", "context")),  # weights and optimizer state: over the context shards too
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
  (ACT_HEADS_ALL, ("tensor", "context")),
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


def resolve_mesh_shape(shape: Sequence[int], num_devices: int, slices: int = 1) -> dict[str, int]:
  """``{axis: size}`` for a ``MESH_AXES`` shape; -1 in one place takes the remaining devices.

  ``slices`` > 1: ``shape`` is one slice's (ICI) mesh over ``num_devices / slices`` devices and
  the slices multiply the ``data`` axis (data parallelism over DCN, the only traffic that
  crosses slices: one gradient reduction per step)."""
  if not isinstance(slices, int) or slices < 1 or num_devices % slices:
    raise ValueError(f"mesh slices={slices} must be a positive divisor of {num_devices} devices")
  per_slice = num_devices // slices
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
  if -1 in shape:
    rest = int(np.prod([s for s in shape if s != -1]))
    if rest <= 0 or per_slice % rest:
      raise ValueError(f"mesh shape {shape} does not divide {per_slice} devices")
    shape[shape.index(-1)] = per_slice // rest
  if any(s < 1 for s in shape) or int(np.prod(shape)) != per_slice:
    what = f"{per_slice} per slice ({slices} slices)" if slices > 1 else f"{per_slice}"
    raise ValueError(
      f"mesh shape {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, have {what}"
    )
  shape[0] *= slices
  return dict(zip(MESH_AXES, shape))


def device_grid(shape: Sequence[int], devices, slices: int = 1) -> np.ndarray:
  """``devices`` as the ``MESH_AXES`` array of :func:`resolve_mesh_shape`'s sizes. With several
  slices, slice ``i`` holds data indices ``[i * d, (i + 1) * d)``: devices that report a
  ``slice_index`` (TPU) are grouped by it, others (CPU tests) by their order."""
  sizes = resolve_mesh_shape(shape, len(devices), slices)
  per_slice = (sizes["data"] // slices, *list(sizes.values())[1:])
  by_slice = sorted(range(len(devices)), key=lambda i: getattr(devices[i], "slice_index", 0))
  grid = np.array([devices[i] for i in by_slice], dtype=object).reshape(slices, *per_slice)
  return grid.reshape(tuple(sizes.values()))


def make_mesh(shape: Sequence[int], devices=None, slices: int = 1) -> Mesh:
  """A ``MESH_AXES`` mesh of the given shape (see :func:`resolve_mesh_shape`)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(
    device_grid(shape, devices, slices), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES)
  )


def _check_filters(filters) -> None:
  for f in filters:  # a rules table is a tuple too: nnx would read its names as path filters
    if isinstance(f, tuple) and f and all(isinstance(r, tuple) and len(r) == 2 for r in f):
      raise TypeError("a rules table was passed as an nnx filter; pass it as rules=...")


def _split(model, filters):
  """``(graphdef, state)``: the state of ``model``'s variables matching any of ``filters`` (all
  of them when there are none)."""
  if not filters:
    return nnx.split(model)
  graphdef, state, _ = nnx.split(model, nnx.Any(*filters), ...)
  return graphdef, state


def abstract_state(make: Callable[[], nnx.Module], mesh: Mesh | None, *filters, rules=RULES):
  """``(graphdef, state)`` of the model ``make()`` builds, nothing allocated: the state of its
  variables that match ``filters`` (all of them when none are given), as
  ``jax.ShapeDtypeStruct``s carrying their ``NamedSharding``s on ``mesh`` (no sharding when
  ``mesh`` is None). Also the orbax restore target.

  ``make`` takes no arguments and builds the model (with its own ``nnx.Rngs``). The graphdef is
  the whole model's, so ``nnx.merge(graphdef, state, rest)`` works with the rest of its state.
  """
  _check_filters(filters)
  with contextlib.ExitStack() as stack:
    if mesh is not None:
      stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(axis_rules(rules))
    graphdef, state = _split(nnx.eval_shape(make), filters)
  if mesh is None:
    return graphdef, state
  shardings = state_shardings(state, mesh, rules)
  sds = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
  return graphdef, jax.tree.map(sds, state, shardings)


def create_state(make: Callable[[], nnx.Module], mesh: Mesh | None, *filters, rules=RULES):
  """``(graphdef, state)`` as :func:`abstract_state`, with the state initialised under ``jit``
  straight into its shardings (``out_shardings``); only the variables matching ``filters`` are
  ever created (e.g. a LoRA model's base weights never are). ``mesh=None``: on the default
  device. Without filters, ``nnx.merge(graphdef, state)`` is the module.
  """
  graphdef, abstract = abstract_state(make, mesh, *filters, rules=rules)

  def init():
    return _split(make(), filters)[1]

  if mesh is None:
    return graphdef, jax.jit(init)()
  shardings = jax.tree.map(lambda a: a.sharding, abstract)
  with use_mesh(mesh, rules):
    return graphdef, jax.jit(init, out_shardings=shardings)()


def state_shardings(state, mesh: Mesh, rules=RULES):
  """NamedShardings for an nnx state from its logical annotations."""
  with axis_rules(rules):
    return nnx.get_named_sharding(state, mesh)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=RULES):
  """Mesh + rules context for tracing sharded computations."""
  with jax.set_mesh(mesh), axis_rules(rules):
    yield mesh


def path_str(path) -> str:
  """``student/blocks/attn1/to_q/kernel`` from a jax key path (nnx's ``.value`` dropped)."""
  parts = []
  for k in path:
    name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
    if name != "value":
      parts.append(str(name))
  return "/".join(parts)


def parse_mesh_shape(text: str) -> tuple[int, ...]:
  """``"(1,-1,1,1)"`` -> ``(1, -1, 1, 1)``: a CLI's mesh flag; ValueError ``"TEXT: why"``."""
  import ast

  try:
    shape = ast.literal_eval(text.strip())
    shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
  except (ValueError, SyntaxError, TypeError):
    raise ValueError(f"{text}: expected 4 integers like (1,-1,1,1)") from None
  if len(shape) != 4:
    raise ValueError(f"{text}: needs 4 entries (data, fsdp, context, tensor)")
  return shape
