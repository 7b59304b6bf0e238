"""Wan2.1-I2V-14B. ``--config=configs/wan_i2v.py:VARIANT[,SLICE]``: VARIANT ``480p`` (default)
or ``720p``; SLICE the TPU slice whose layout to take (default ``v5p-64``; see ``LAYOUTS``).

  python -m pose_jax.main --config=configs/wan_i2v.py:480p,v6e-64 --workdir=gs://BUCKET/runs/p480 \
    --config.ckpt.init_from=gs://BUCKET/teachers/wan21_i2v_14b  --config.data.path=/data/shards

Steps and learning rates are ``common.base()``'s, the paper's (second-hand: ~500 priming steps at
1e-6, ~1000 equilibrium steps at 2e-6). This file adds the TPU runtime and, per variant, the
frame size and the flow shift, and per variant and slice the mesh and the micro-batches.
Those come from the TPU ahead-of-time compiles (``python -m pose_jax.aot
--config=configs/wan_i2v.py:720p --topology=v5p-64``; bench/README.md, "Weights over (fsdp,
context)"): change them together with the slice.
"""

from configs import common

# height, width, flow shift (Wan: 3.0 at 480p, 5.0 at 720p)
SIZES = {"480p": (480, 832, 3.0), "720p": (720, 1280, 5.0)}
# (variant, slice) -> (mesh (data, fsdp, context, tensor), micro-batches), batch 64, remat full,
# splash attention; -1: FSDP over the rest of the slice. Each fits with at least 10% HBM headroom
# (bench/README.md, "Weights over (fsdp, context)", names the compiles). Every layout is
# compute bound (the roofline), so throughput per chip is the same where it fits: the choice is
# the fewest micro-batches and the least context parallelism that fit, i.e. the fewest weight
# gathers and the least attention communication. A micro-batch must divide over data x fsdp.
LAYOUTS = {
  ("480p", "v5p-64"): ((1, -1, 1, 1), 2),  # 59.2 of 95.74 GiB (one micro-batch: 89.7, 6%)
  ("480p", "v5p-128"): ((1, -1, 1, 1), 1),  # 44.6 GiB
  ("480p", "v6e-64"): ((1, -1, 4, 1), 4),  # 21.3 of 31.25 GiB (context 2: does not fit)
  ("480p", "v6e-256"): ((1, -1, 4, 1), 1),  # 14.9 of 31.25 GiB
  ("720p", "v5p-64"): ((1, -1, 2, 1), 4),  # 64.7 GiB (FSDP alone, or 2 micro-batches: no fit)
  ("720p", "v5p-128"): ((1, -1, 2, 1), 2),  # 53.4 GiB
}


def get_config(arg=None):
  variant, _, slice_ = (arg or "480p").partition(",")
  if variant not in SIZES:
    raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(SIZES)}")
  slice_ = slice_ or "v5p-64"
  if (variant, slice_) not in LAYOUTS:
    known = sorted(s for v, s in LAYOUTS if v == variant)
    raise ValueError(f"no {variant} layout for slice {slice_!r}; compiled for {known}")
  height, width, shift = SIZES[variant]
  c = common.base()
  c.model.dtype = "bfloat16"
  c.model.attention = "splash"
  c.model.remat = "full"

  c.mesh.shape, c.train.micro_batches = LAYOUTS[variant, slice_]
  c.pose.flow_shift = shift
  # batch_size stays base()'s 64 (2 clips per chip on v5p-64).

  c.data.height = height
  c.data.width = width
  return c
