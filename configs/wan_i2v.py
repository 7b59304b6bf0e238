"""Wan2.1-I2V-14B. Variants: ``--config=configs/wan_i2v.py:480p`` (default) or ``:720p``.

  python -m pose_jax.main --config=configs/wan_i2v.py --workdir=gs://BUCKET/runs/pose480 \
    --config.ckpt.init_from=gs://BUCKET/teachers/wan21_i2v_14b  --config.data.path=/data/shards

Steps and learning rates follow the paper (second-hand: ~500 priming steps at 1e-6, ~1000
equilibrium steps at 2e-6). Mesh, micro-batches and remat come from the TPU ahead-of-time
compile table (README; ``python -m pose_jax.aot --config=configs/wan_i2v.py:720p
--topology=v5p-64``): change them together with the slice.
"""

import ml_collections

from pose_jax.pose.config import PoseConfig

# height, width, flow shift (Wan: 3.0 at 480p, 5.0 at 720p)
SIZES = {"480p": (480, 832, 3.0), "720p": (720, 1280, 5.0)}
# Mesh (data, fsdp, context, tensor) and micro-batches per variant, from the TPU ahead-of-time
# compile table in the README (v5p-64, batch 64, remat full, splash): 480p fits with FSDP over
# the slice (peak 89.9 of 95.7 GiB); 720p needs 2-way context parallelism and 4 micro-batches
# (81.8 GiB; FSDP alone plans 173 GiB of temporaries).
LAYOUT = {"480p": ((1, -1, 1, 1), 1), "720p": ((1, -1, 2, 1), 4)}


def get_config(arg=None):
  variant = arg or "480p"
  if variant not in SIZES:
    raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(SIZES)}")
  height, width, shift = SIZES[variant]
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.preset = "i2v_14b"
  c.model.num_layers = 40
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.attention = "splash"
  c.model.remat = "full"
  c.model.scan_layers = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape, micro_batches = LAYOUT[variant]  # -1: FSDP over the rest of the slice

  c.pose = PoseConfig.config_section(
    phases=("priming", "equilibrium"), steps=(500, 1000), flow_shift=shift
  )

  c.optim = ml_collections.ConfigDict()
  group = dict(
    lr=1e-6,
    warmup_steps=50,
    decay="constant",
    final_frac=0.0,
    clip=1.0,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.0,
  )
  c.optim.student = dict(group, lr_by_phase=dict(priming=1e-6, equilibrium=2e-6))
  c.optim.lora = dict(group, lr=1e-5)
  c.optim.head = dict(group, lr=2e-6)
  c.optim.freeze = ()

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # global; 2 clips per chip on v5p-64 (32 chips)
  c.train.micro_batches = micro_batches
  c.train.log_every = 10
  c.train.max_bad_steps = 10

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 100
  c.ckpt.keep = 3
  c.ckpt.async_save = True
  c.ckpt.init_from = ""  # the converted teacher: python -m pose_jax.convert import ...

  c.data = ml_collections.ConfigDict()
  c.data.kind = "records"
  c.data.path = ""  # ArrayRecord shards from python -m pose_jax.data.prepare
  c.data.eval_path = ""
  c.data.frames = 81
  c.data.height = height
  c.data.width = width
  c.data.size = 0  # toy data only

  c.eval = ml_collections.ConfigDict()
  c.eval.teacher_steps = 50
  c.eval.every = 250  # sample videos + metrics every N steps and at each phase end
  c.eval.fps = 16
  c.eval.pipeline = ""  # a diffusers Wan2.1 I2V folder: its VAE decodes the eval samples
  return c
