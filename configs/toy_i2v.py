"""The tiny built-in default: the whole POSE recipe on a CPU in minutes.

  python -m pose_jax.main --config=configs/toy_i2v.py [--workdir=/tmp/pose_toy]

Toy data: short clips made from scikit-image's photos by a camera move named in the caption,
in the toy codec's pixel latents (Z=3), with tiny random text/image encoders. Phases: a tiny
teacher is pretrained by flow matching, then primed (DMD with a LoRA fake score) and brought to
the adversarial equilibrium; the result samples in one step.
"""

import ml_collections

from pose_jax.pose.config import PoseConfig


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.preset = "toy"
  c.model.num_layers = 4
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.model.attention = "xla"
  c.model.remat = "none"
  c.model.scan_layers = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1, 1)  # (data, fsdp, context, tensor); -1 takes the remaining devices

  c.pose = PoseConfig.config_section(
    phases=("pretrain", "priming", "equilibrium"),
    steps=(300, 60, 120),
    cfg_real=3.0,
    lora_rank=4,
    d_num_queries=4,
    d_width=32,
    d_heads=2,
  )

  c.optim = ml_collections.ConfigDict()
  group = dict(
    lr=1e-3,
    warmup_steps=20,
    decay="constant",
    final_frac=0.0,
    clip=1.0,
    b1=0.9,
    b2=0.99,
    eps=1e-8,
    weight_decay=0.0,
  )
  # Distillation moves the pretrained student far less than pretraining did: at 1e-3, 60 priming
  # steps took its one-step first-frame PSNR from 21.7 to 9.3 dB (Adam makes lr-sized moves even
  # on the near-zero early DMD gradient); 2e-5 keeps 20.8 dB and equilibrium then reaches 23.4.
  c.optim.student = dict(group, lr_by_phase=dict(pretrain=1e-3, priming=2e-5, equilibrium=1e-4))
  c.optim.lora = dict(group)
  c.optim.head = dict(group, lr=1e-3)
  c.optim.freeze = ()

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 8  # global
  c.train.micro_batches = 1
  c.train.log_every = 20
  c.train.max_bad_steps = 5

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 100
  c.ckpt.keep = 2
  c.ckpt.async_save = True
  c.ckpt.init_from = ""  # a converted teacher (python -m pose_jax.convert import ...)

  c.data = ml_collections.ConfigDict()
  c.data.kind = "toy"  # toy | records
  c.data.path = ""  # records: ArrayRecord shards dir; toy: built under <workdir>/data
  c.data.frames = 9
  c.data.size = 48
  c.data.eval_path = ""

  c.eval = ml_collections.ConfigDict()
  c.eval.teacher_steps = 20  # Euler steps (with CFG) of the teacher baseline in the final report
  c.eval.every = 0  # sample videos + metrics every N steps (0: at the end of each phase only)
  c.eval.fps = 8
  c.eval.pipeline = ""  # real data: a diffusers Wan pipeline folder whose VAE decodes samples

  return c
