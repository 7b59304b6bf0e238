"""The tiny built-in default: the whole POSE recipe on a CPU in minutes.

  python -m pose_jax.main --config=configs/toy_i2v.py [--workdir=/tmp/pose_toy]

Toy data: short clips made from scikit-image's photos by a camera move named in the caption,
in the toy codec's pixel latents (Z=3), with tiny random text/image encoders. Phases: a tiny
teacher is pretrained by flow matching, then primed (DMD with a LoRA fake score) and brought to
the adversarial equilibrium; the result samples in one step. Its results: bench/README.md
("The toy run").
"""

from configs import common


def get_config(arg=None):
  del arg
  c = common.base()
  c.model.preset = "toy"
  c.model.num_layers = 4

  c.pose.phases = ("pretrain", "priming", "equilibrium")
  c.pose.steps = (300, 60, 120)
  c.pose.cfg_real = 3.0
  c.pose.lora_rank = 4
  c.pose.d_num_queries = 4
  c.pose.d_width = 32
  c.pose.d_heads = 2

  group = dict(lr=1e-3, warmup_steps=20, b2=0.99)
  # Distillation must move the pretrained student far less than pretraining did: Adam makes
  # lr-sized moves even on the near-zero early DMD gradient, and at pretrain's lr the priming
  # phase wrecks the one-step sample (the lr comparison in bench/README.md, "The toy run").
  by_phase = dict(pretrain=1e-3, priming=2e-5, equilibrium=1e-4)
  c.optim.student = common.optim_group(**group, lr_by_phase=by_phase)
  c.optim.lora = common.optim_group(**group)
  c.optim.head = common.optim_group(**group)

  c.train.batch_size = 8
  c.train.log_every = 20
  c.train.max_bad_steps = 5
  c.ckpt.keep = 2

  c.data.kind = "toy"
  c.data.frames = 9
  c.data.size = 48

  c.eval.teacher_steps = 20
  c.eval.every = 0  # sample videos + metrics at the end of each phase only
  c.eval.fps = 8
  return c
