"""A roofline lower bound on a compiled step's time, per device: no step can run faster than
its FLOPs at the chip's peak, nor than the bytes it must move through HBM at the HBM bandwidth.

  compute_s = (model FLOPs + remat recompute) / (devices x peak FLOP/s)
  hbm_s     = HBM bytes one device must read or write / HBM bandwidth
  step_s    = max(compute_s, hbm_s)

The HBM bytes counted are the ones no schedule avoids:
  * weights: every DiT pass reads each of its (gathered) weights in the compute dtype once per
    micro-batch forward, once more in the backward (the input gradients need them), and once more
    when remat re-runs the forward. Under FSDP a device holds whole gathered layers in turn, so
    it reads all of a layer's weights; tensor parallelism divides them.
  * the optimizer: each trained parameter's float32 value, gradient and two Adam moments are
    read and the value and moments written (28 bytes), on the device's FSDP x tensor shard.
Activations, the gathers' and reductions' ICI traffic and anything the kernels re-read are left
out, so this is a bound, not a model: a real step is slower. It says which resource bounds the
step and how far the "at 40% MFU" figure is from the ceiling.
"""

from __future__ import annotations

import math

import jax

from pose_jax.sharding import path_str

ADAM_BYTES = 28  # float32 value read + written, gradient read, two moments read + written
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


def _reads(backward: str, remat: bool) -> int:
  """Weight reads per pass: forward, backward (input gradients), remat's re-run forward."""
  return 1 if backward == "none" else 2 + int(remat)


def weight_counts(dit_state) -> tuple[int, int]:
  """``(block parameters, other parameters)`` of an (abstract) DiT state."""
  blocks = other = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(dit_state):
    n = math.prod(leaf.shape)
    if path_str(path).startswith("blocks"):
      blocks += n
    else:
      other += n
  return blocks, other


def roofline(
  flops: dict,
  *,
  cfg,
  taps,
  dit_state,
  trained_params: int,
  micro_batches: int,
  mesh_shape: dict,
  chip,
  devices: int,
) -> dict:
  """The bound for one step whose FLOPs are ``flops`` (:func:`pose_jax.aot.flops.phase_flops`,
  whose ``passes`` say which model each pass runs). ``trained_params``: parameters the step's
  optimizer updates (0 for a sampler)."""
  blocks, other = weight_counts(dit_state)
  per_block = blocks / cfg.num_layers
  params = {"dit": blocks + other, "lora": blocks + other, "taps": per_block * (max(taps) + 1)}
  width = DTYPE_BYTES[cfg.dtype] / mesh_shape["tensor"]
  remat = cfg.remat != "none"
  weight_bytes = sum(
    p["count"] * micro_batches * params[p["model"]] * width * _reads(p["backward"], remat)
    for p in flops["passes"]
  )
  shards = mesh_shape["fsdp"] * mesh_shape["context"] * mesh_shape["tensor"]  # sharding.RULES
  optimizer_bytes = ADAM_BYTES * trained_params / shards
  hbm_bytes = weight_bytes + optimizer_bytes
  compute_s = (flops["model_flops"] + flops["remat_recompute_flops"]) / (
    devices * chip.peak_tflops * 1e12
  )
  hbm_s = hbm_bytes / (chip.hbm_gb_s * 1e9)
  return dict(
    roofline_step_s=float(f"{max(compute_s, hbm_s):.4g}"),
    roofline_compute_s=float(f"{compute_s:.4g}"),
    roofline_hbm_s=float(f"{hbm_s:.4g}"),
    roofline_hbm_gb_per_device=round(hbm_bytes / 1e9, 2),
    roofline_bound="compute" if compute_s >= hbm_s else "hbm",
  )
