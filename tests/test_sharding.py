"""Sharding of WanTransformer on meshes of 8 fake CPU devices; abstract-first creation; no eager
sharding (models build without a mesh whatever flax's default says)."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pose_jax import sharding as shd
from pose_jax.models import attention
from pose_jax.models.layers import LoRAParam
from pose_jax.models.wan import WanTransformer, preset
from pose_jax.pose import models as pose_models
from pose_jax.pose.config import PoseConfig

CFG = preset("tiny")  # D=32, 2 heads, ffn 64, 2 layers
W = ("fsdp", "context")  # the weight axis EMBED: over the fsdp and the context shards
# Expected spec and per-device shard shape for a few parameters, per mesh (data, fsdp, ctx, tensor).
EXPECT = {
  ("blocks", "attn1", "to_q", "kernel"): (
    P(None, W, "tensor"),
    lambda f, t: (2, 32 // f, 32 // t),
  ),
  ("blocks", "attn1", "to_out", "kernel"): (
    P(None, "tensor", W),
    lambda f, t: (2, 32 // t, 32 // f),
  ),
  ("blocks", "ffn", "proj_in", "kernel"): (
    P(None, W, "tensor"),
    lambda f, t: (2, 32 // f, 64 // t),
  ),
  ("blocks", "attn2", "norm_added_k", "weight"): (P(None, "tensor"), lambda f, t: (2, 32 // t)),
  ("blocks", "scale_shift_table"): (P(None, None, None, W), lambda f, t: (2, 1, 6, 32 // f)),
  ("patch_embedding", "kernel"): (P(None, W), lambda f, t: (144, 32 // f)),
  ("condition_embedder", "time_proj", "kernel"): (P(W, None), lambda f, t: (32 // f, 192)),
}


def _args(batch=8):
  ks = jax.random.split(jax.random.key(0), 3)
  return (
    jax.random.normal(ks[0], (batch, 2, 8, 6, 36)),
    jnp.linspace(5.0, 990.0, batch),
    jax.random.normal(ks[1], (batch, 7, 32)),
    jax.random.normal(ks[2], (batch, 4, 32)),
  )


@pytest.fixture(scope="module")
def reference():
  model = WanTransformer(CFG, rngs=nnx.Rngs(0))
  return nnx.state(model), model(*_args())


@pytest.mark.parametrize("shape", [(8, 1, 1, 1), (2, 4, 1, 1), (2, 2, 1, 2), (1, 2, 2, 2)])
def test_params_sharded_and_forward_matches_unsharded(shape, reference):
  ref_state, ref_out = reference
  mesh = shd.make_mesh(shape)
  model = nnx.merge(*shd.create_state(lambda: WanTransformer(CFG, rngs=nnx.Rngs(0)), mesh))
  f, t = mesh.shape["fsdp"] * mesh.shape["context"], mesh.shape["tensor"]
  flat = {tuple(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.state(model))}
  for path, (spec, shard_shape) in EXPECT.items():
    arr = flat[path]
    assert arr.sharding.spec == spec, (path, arr.sharding.spec)
    assert arr.addressable_shards[0].data.shape == shard_shape(f, t), path
  # Created sharded from the same seed == created unsharded.
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(ref_state), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # jit vs eager RNG math

  batch = NamedSharding(mesh, shd.logical_to_spec((shd.ACT_BATCH,)))
  args = [jax.device_put(a, batch) for a in _args()]
  graphdef, state = nnx.split(model)
  with shd.use_mesh(mesh):
    out = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)
  assert out.addressable_shards[0].data.shape[0] == 8 // (mesh.shape["data"] * mesh.shape["fsdp"])
  np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-5 * float(jnp.abs(ref_out).max()))


def test_abstract_state_allocates_nothing_and_carries_shardings():
  mesh = shd.make_mesh((1, 8, 1, 1))
  _, abstract = shd.abstract_state(
    lambda: WanTransformer(preset("i2v_14b"), rngs=nnx.Rngs(0)), mesh
  )
  q = abstract["blocks"]["attn1"]["to_q"]["kernel"]
  assert isinstance(q.get_value(), jax.ShapeDtypeStruct)
  assert q.shape == (40, 5120, 5120)
  assert q.sharding.spec == P(None, W, "tensor")
  assert q.sharding.shard_shape(q.shape) == (40, 640, 5120)


def test_filtered_state_is_only_that_part_and_merges_with_the_rest():
  mesh = shd.make_mesh((2, 4, 1, 1))
  make = lambda: WanTransformer(CFG.replace(lora_rank=2), rngs=nnx.Rngs(1))
  graphdef, lora = shd.create_state(make, mesh, LoRAParam)
  _, abstract = shd.abstract_state(make, mesh, LoRAParam)
  names = {p[-1] for p, _ in nnx.to_flat_state(lora)}
  assert names == {"lora_a", "lora_b"}
  assert jax.tree.structure(lora) == jax.tree.structure(abstract)
  for a, b in zip(jax.tree.leaves(lora), jax.tree.leaves(abstract)):
    assert a.sharding == b.sharding and (a.shape, a.dtype) == (b.shape, b.dtype)
  a = lora["blocks"]["attn1"]["to_q"]["lora_a"][...]
  assert a.sharding.spec == P(None, W, None) and a.shape == (2, 32, 2)
  _, base = nnx.split(WanTransformer(CFG, rngs=nnx.Rngs(0)))
  model = nnx.merge(graphdef, lora, base)  # the LoRA on another model's base weights
  np.testing.assert_array_equal(
    model.patch_embedding.kernel[...], base["patch_embedding"]["kernel"][...]
  )
  with pytest.raises(TypeError, match="rules="):
    shd.abstract_state(make, mesh, shd.RULES)


def test_building_needs_no_mesh_with_flax_eager_sharding_on():
  """Every parameter is created with ``eager_sharding=False``: with flax's default
  (``flax_always_shard_variable=True``, which importing pose_jax leaves alone) and no mesh,
  the models build, and sharded creation still gives the logical PartitionSpecs."""
  assert flax.config.flax_always_shard_variable  # flax's default: nothing flipped it
  with nnx.use_eager_sharding(True):
    with pytest.raises(ValueError, match="mesh"):  # what a plain annotated Param would do
      nnx.Param(jnp.zeros((2,)), out_sharding=(shd.EMBED,))
    knobs = PoseConfig(lora_rank=2, d_width=16, d_heads=2, d_num_queries=2)
    models, teacher, lora, head = pose_models.build(CFG, knobs)
    variables = [v for s in (teacher, lora, head) for _, v in nnx.to_flat_state(s)]
    assert variables and all(v.eager_sharding is False for v in variables)
    mesh = shd.make_mesh((1, 4, 1, 2))
    _, teacher, lora, _ = pose_models.build(CFG, knobs, mesh=mesh)
  q = teacher["blocks"]["attn1"]["to_q"]["kernel"][...]
  assert q.sharding.spec == P(None, W, "tensor")
  assert q.addressable_shards[0].data.shape == (2, 32 // 4, 32 // 2)
  b = lora["blocks"]["ffn"]["proj_in"]["lora_b"][...]
  assert b.sharding.spec == P(None, None, "tensor")


def test_mesh_and_rule_errors():
  with pytest.raises(ValueError, match="needs 6 devices"):
    shd.make_mesh((2, 3, 1, 1))
  with pytest.raises(ValueError, match="4 entries"):
    shd.make_mesh((8, 1))
  assert shd.make_mesh((2, -1, 1, 1)).shape["fsdp"] == 4
  with pytest.raises(KeyError, match="no rule"):
    shd.logical_to_spec(("embedding",))
  assert shd.logical_to_spec((shd.ACT_BATCH, shd.EMBED)) == P(("data", "fsdp"), W)


def test_slices_multiply_the_data_axis_and_group_devices_by_slice():
  # mesh.shape is one slice's: 2 slices of (1, 2, 1, 2) over 8 devices -> data 2.
  assert shd.resolve_mesh_shape((1, -1, 1, 2), 8, slices=2) == dict(
    data=2, fsdp=2, context=1, tensor=2
  )
  with pytest.raises(ValueError, match="slices=3 must be a positive divisor of 8"):
    shd.resolve_mesh_shape((1, -1, 1, 1), 8, slices=3)
  with pytest.raises(ValueError, match="needs 8 devices, have 4 per slice \\(2 slices\\)"):
    shd.resolve_mesh_shape((1, 8, 1, 1), 8, slices=2)

  class Dev:  # a TPU device's slice_index, listed interleaved
    def __init__(self, i):
      self.id, self.slice_index = i, i % 2

  grid = shd.device_grid((1, -1, 1, 1), [Dev(i) for i in range(8)], slices=2)
  assert grid.shape == (2, 4, 1, 1)
  assert [d.slice_index for d in grid[0].ravel()] == [0] * 4  # data index 0: slice 0 only
  assert [d.id for d in grid[1].ravel()] == [1, 3, 5, 7]
  # CPU devices have no slice_index: slices are consecutive runs of devices.
  mesh = shd.make_mesh((1, -1, 1, 1), slices=2)
  assert dict(mesh.shape) == dict(data=2, fsdp=4, context=1, tensor=1)
  assert [d.id for d in mesh.devices[1].ravel()] == [d.id for d in jax.devices()[4:8]]


def test_strided_micro_batches_need_no_data_movement():
  """A batch sharded over (data, fsdp) splits into micro-batches with no collective in the
  compiled scan: micro-batch ``i`` is rows ``i, i + m, ...``. The contiguous split (rows
  ``i B/m ...``) needs one, which is what this test would catch."""
  from jax.sharding import Mesh

  from pose_jax.training import steps

  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))
  spec = NamedSharding(mesh, P(("data", "fsdp")))
  x = jax.device_put(jnp.arange(32 * 3.0).reshape(32, 3), spec)
  contiguous = lambda a, m: a.reshape(m, a.shape[0] // m, *a.shape[1:])

  def program(split):
    def f(a):
      parts = split(a, 2)
      return jax.lax.scan(lambda c, mb: (c, jnp.sin(mb)), 0.0, parts)[1]

    out = NamedSharding(mesh, P(None, ("data", "fsdp")))
    return jax.jit(f, out_shardings=out).lower(x).compile().as_text()

  collectives = ("all-to-all", "collective-permute", "all-gather", "all-reduce")
  strided = program(lambda a, m: steps.split_micro_batches({"a": a}, m)["a"])
  assert not any(c in strided for c in collectives)
  assert any(c in program(contiguous) for c in collectives)
  parts = np.asarray(steps.split_micro_batches({"a": x}, 2)["a"])
  np.testing.assert_array_equal(parts[1], np.asarray(x)[1::2])


@pytest.mark.parametrize(
  "shape,context_parallel",
  [((1, 2, 2, 2), "allgather"), ((2, 2, 2, 1), "ulysses"), ((1, 1, 8, 1), "allgather")],
)
def test_context_parallel_splash_model_matches_unsharded(
  shape, context_parallel, reference, monkeypatch
):
  # The whole DiT with splash attention (Pallas interpret mode, so it runs on CPU) and its video
  # tokens split over context: self-attention by the scheme, cross-attention by allgather.
  ref_state, ref_out = reference
  monkeypatch.setattr(attention, "_require_backend", lambda *a: None)
  monkeypatch.setattr(attention, "splash", functools.partial(attention.splash, interpret=True))
  cfg = CFG.replace(attention="splash", context_parallel=context_parallel)
  mesh = shd.make_mesh(shape)
  graphdef = nnx.graphdef(WanTransformer(cfg, rngs=nnx.Rngs(0)))
  batch = NamedSharding(mesh, shd.logical_to_spec((shd.ACT_BATCH,)))
  args = [jax.device_put(a, batch) for a in _args()]
  with shd.use_mesh(mesh):
    out = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(ref_state, *args)
  np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-5 * float(jnp.abs(ref_out).max()))
