"""Wan2.1-I2V-14B. Variants: ``--config=configs/wan_i2v.py:480p`` (default) or ``:720p``.

  python -m pose_jax.main --config=configs/wan_i2v.py --workdir=gs://BUCKET/runs/pose480 \
    --config.ckpt.init_from=gs://BUCKET/teachers/wan21_i2v_14b  --config.data.path=/data/shards

Steps and learning rates are ``common.base()``'s, the paper's (second-hand: ~500 priming steps at
1e-6, ~1000 equilibrium steps at 2e-6). This file adds the TPU runtime and, per variant, the
frame size, the flow shift, the mesh and the micro-batches. Mesh, micro-batches and remat come
from the TPU ahead-of-time compiles (``python -m pose_jax.aot --config=configs/wan_i2v.py:720p
--topology=v5p-64``; bench/README.md): change them together with the slice.
"""

from configs import common

# height, width, flow shift (Wan: 3.0 at 480p, 5.0 at 720p)
SIZES = {"480p": (480, 832, 3.0), "720p": (720, 1280, 5.0)}
# Mesh (data, fsdp, context, tensor) and micro-batches per variant, on v5p-64 with batch 64, remat
# full and splash attention, for at least 10% HBM headroom: 480p with FSDP over the slice peaks
# at 89.7 of 95.74 GiB in one micro-batch (bench/results/compile_480p_v5p-64_equilibrium.json,
# 6% headroom), at 59.2 in 2 (compile_480p_v5p-64_mb2.json); at 720p FSDP alone runs out of HBM
# (compile_720p_v5p-64.json), 2-way context parallelism with 4 micro-batches fits
# (compile_720p_v5p-64_ctx2_mb4.json). On v5p-128 (64 chips) a micro-batch must still divide
# over fsdp 64 (config.validate says so): there 480p takes --config.train.micro_batches=1 (44.6
# GiB, compile_480p_v5p-128.json).
LAYOUT = {"480p": ((1, -1, 1, 1), 2), "720p": ((1, -1, 2, 1), 4)}


def get_config(arg=None):
  variant = arg or "480p"
  if variant not in SIZES:
    raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(SIZES)}")
  height, width, shift = SIZES[variant]
  c = common.base()
  c.model.dtype = "bfloat16"
  c.model.attention = "splash"
  c.model.remat = "full"

  c.mesh.shape, c.train.micro_batches = LAYOUT[variant]  # -1: FSDP over the rest of the slice
  c.pose.flow_shift = shift
  # batch_size stays base()'s 64: 2 clips per chip on v5p-64 (32 chips).

  c.data.height = height
  c.data.width = width
  return c
