"""The roofline bound of an AOT report entry (pose_jax.aot.roofline), on numbers worked by hand."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from pose_jax.aot import topology
from pose_jax.aot.roofline import roofline, weight_counts

CHIP = dataclasses.replace(
  topology.CHIPS["v5p"], peak_tflops=1e-9, hbm_gb_s=1e-6
)  # 1e3 FLOP/s, 1e3 B/s
STATE = {  # 100 block parameters (4 layers), 20 others
  "blocks": {"w": jax.ShapeDtypeStruct((4, 5, 5), jnp.float32)},
  "head": {"w": jax.ShapeDtypeStruct((4, 5), jnp.float32)},
}


@dataclasses.dataclass
class Cfg:
  num_layers: int = 4
  dtype: str = "bfloat16"
  remat: str = "full"


def _flops(model_flops=6000.0, recompute=2000.0):
  passes = [
    dict(count=2, model="dit", backward="full"),  # 2 x 120 params x 3 reads (fwd, bwd, remat)
    dict(count=1, model="taps", backward="none"),  # blocks 0-1: 50 params, 1 read
  ]
  return dict(model_flops=model_flops, remat_recompute_flops=recompute, passes=passes)


def _bound(cfg=None, mesh=None, micro_batches=2, trained=120, flops=None):
  mesh = mesh or dict(data=1, fsdp=2, context=1, tensor=1)
  return roofline(
    flops or _flops(),
    cfg=cfg or Cfg(),
    taps=(0, 1),
    dit_state=STATE,
    trained_params=trained,
    micro_batches=micro_batches,
    mesh_shape=mesh,
    chip=CHIP,
    devices=2,
  )


def test_weight_counts_split_blocks_from_the_rest():
  assert weight_counts(STATE) == (100, 20)


def test_hbm_bytes_count_each_pass_micro_batch_and_read():
  # weights: 2 micro-batches x (2 x 120 x 3 + 1 x 50 x 1) x 2 bytes = 3080; Adam: 28 x 120 / 2.
  r = _bound()
  assert r["roofline_hbm_s"] == pytest.approx(4.76)
  assert r["roofline_compute_s"] == pytest.approx(8000 / (2 * 1e3))  # FLOPs incl. recompute
  assert r["roofline_step_s"] == pytest.approx(4.76) and r["roofline_bound"] == "hbm"
  # No remat: the backward reads the weights once, not twice; float32 doubles the bytes;
  # tensor parallelism divides weights and optimizer shards.
  assert _bound(cfg=Cfg(remat="none"))["roofline_hbm_s"] == pytest.approx(
    (2 * 530 * 2 + 1680) / 1e3
  )
  assert _bound(cfg=Cfg(dtype="float32"))["roofline_hbm_s"] == pytest.approx(
    (2 * 3080 + 1680) / 1e3
  )
  tp = _bound(mesh=dict(data=1, fsdp=1, context=1, tensor=2))
  assert tp["roofline_hbm_s"] == pytest.approx((3080 / 2 + 1680) / 1e3)
  # The optimizer state is sharded over context too (sharding.RULES): fsdp 1 x context 2 = 2.
  cp = _bound(mesh=dict(data=1, fsdp=1, context=2, tensor=1))
  assert cp["roofline_hbm_s"] == pytest.approx(4.76)
  assert _bound(micro_batches=1)["roofline_hbm_s"] == pytest.approx((3080 / 2 + 1680) / 1e3)


def test_compute_bound_when_flops_dominate():
  r = _bound(flops=_flops(model_flops=1e5, recompute=0.0))
  assert r["roofline_bound"] == "compute" and r["roofline_step_s"] == pytest.approx(50.0)
