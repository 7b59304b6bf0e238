"""Wan2.1-I2V-14B. Variants: ``--config=configs/wan_i2v.py:480p`` (default) or ``:720p``.

  python -m pose_jax.main --config=configs/wan_i2v.py --workdir=gs://BUCKET/runs/pose480 \
    --config.ckpt.init_from=gs://BUCKET/teachers/wan21_i2v_14b  --config.data.path=/data/shards

Steps and learning rates follow the paper (second-hand: ~500 priming steps at 1e-6, ~1000
equilibrium steps at 2e-6). The mesh and remat defaults are provisional until the TPU
ahead-of-time compile table (TPU issue) picks them.
"""

import ml_collections

from pose_jax.pose.knobs import PoseKnobs

# height, width, flow shift (Wan: 3.0 at 480p, 5.0 at 720p)
SIZES = {"480p": (480, 832, 3.0), "720p": (720, 1280, 5.0)}


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
  c.mesh.shape = (1, -1, 1, 1)  # FSDP over the whole slice

  c.pose = PoseKnobs.config_section(phases=("priming", "equilibrium"), steps=(500, 1000),
                                    flow_shift=shift)  # fmt: skip

  c.optim = ml_collections.ConfigDict()
  group = dict(lr=1e-6, warmup_steps=50, decay="constant", final_frac=0.0, clip=1.0, b1=0.9,
               b2=0.999, eps=1e-8, weight_decay=0.0)  # fmt: skip
  c.optim.student = dict(group)
  c.optim.lora = dict(group, lr=1e-5)
  c.optim.head = dict(group, lr=2e-6)
  c.optim.freeze = ()

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # global; one clip per chip on a 64-chip slice
  c.train.micro_batches = 1
  c.train.log_every = 10
  c.train.max_bad_steps = 10

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 100
  c.ckpt.keep = 3
  c.ckpt.async_save = True
  c.ckpt.init_from = ""  # the converted teacher: python -m pose_jax.convert import ...

  c.data = ml_collections.ConfigDict()
  c.data.kind = "records"
  c.data.path = ""  # ArrayRecord shards from python -m pose_jax.prepare
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
