"""The config schema: ``base()`` declares every key the code reads, once, with its default.

Experiment files (``toy_i2v.py``, ``wan_i2v.py``) start from ``base()`` and only override values.
``base()`` is locked, so a misspelt key in an experiment file fails where it is written, and a
misspelt ``--config.KEY=VALUE`` fails on the command line. ``pose_jax.config.validate`` then checks
the values and names the bad key.

Defaults: the paper's recipe on Wan2.1-I2V-14B (preset, phases, steps, learning rates, global
batch 64; ``docs/method.md``), with runtime settings that run on any backend (float32, ``xla``
attention, no remat, data parallelism only) and no frame size (each experiment sets its own).
Config files import this module as ``configs.common``: run commands from the repository root, as
every command in this repository does.
"""

from __future__ import annotations

import ml_collections

from pose_jax.pose.config import PoseConfig


def optim_group(**overrides) -> dict:
  """One optimizer group (``config.optim.<group>``): AdamW with global-norm clipping, linear
  warm-up, then ``constant`` or ``cosine`` decay to ``lr * final_frac`` (``training/optim.py``).
  ``lr_by_phase`` maps a phase name to its own ``lr`` (default: ``lr`` in every phase)."""
  group = dict(
    lr=1e-6,
    warmup_steps=50,
    decay="constant",  # constant | cosine
    final_frac=0.0,
    clip=1.0,  # global-norm clipping; 0 switches it off
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=0.0,
    lr_by_phase={},
  )
  unknown = sorted(set(overrides) - set(group))
  if unknown:
    raise ValueError(f"optim_group: unknown keys {unknown}; choose from {sorted(group)}")
  return {**group, **overrides}


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # parameter init, data order and every training random draw

  # The DiT: a preset of pose_jax.models.wan.config.PRESETS, then these overrides.
  c.model = ml_collections.ConfigDict()
  c.model.preset = "i2v_14b"
  c.model.num_layers = 40
  c.model.dtype = "float32"  # compute dtype (float32 | bfloat16); norms stay float32
  c.model.param_dtype = "float32"
  c.model.attention = "xla"  # xla | chunked | cudnn (GPU) | splash (TPU)
  c.model.context_parallel = "allgather"  # allgather | ulysses (heads divide tensor x context)
  c.model.remat = "none"  # none | full | dots_saveable | ... (models/remat.py)
  c.model.scan_layers = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1, 1)  # (data, fsdp, context, tensor); -1 takes the remaining devices
  # Slices (multi-slice TPU): mesh.shape is then one slice's and the slices multiply `data`.
  c.mesh.slices = 1

  # Every knob of the method (pose_jax/pose/config.py, docs/method.md).
  c.pose = PoseConfig.config_section()

  # One group per trained parameter tree; a phase trains some of them (pose/phases.py).
  c.optim = ml_collections.ConfigDict()
  c.optim.student = optim_group(lr_by_phase=dict(priming=1e-6, equilibrium=2e-6))  # the paper's
  c.optim.lora = optim_group(lr=1e-5)  # the fake score
  c.optim.head = optim_group(lr=2e-6)  # the discriminator head
  c.optim.backbone = None  # pose.d_backbone=trainable_copy only; None: the head's settings
  c.optim.freeze = ()  # regexes over parameter paths that no phase trains

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # global, over all processes
  c.train.micro_batches = 1  # gradient accumulation inside the fused step
  c.train.log_every = 10
  c.train.max_bad_steps = 10  # consecutive non-finite steps (each skipped) before the run stops
  c.train.tensorboard = True  # also write WORKDIR/tensorboard (metrics.jsonl is always written)

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 100
  c.ckpt.keep = 3
  c.ckpt.async_save = True
  c.ckpt.init_from = ""  # the teacher: a converted checkpoint (python -m pose_jax.convert import)

  # kind=records reads path (and eval_path), frames, height and width; kind=toy reads frames and
  # size and builds its clips under WORKDIR/data.
  c.data = ml_collections.ConfigDict()
  c.data.kind = "records"  # records | toy
  c.data.path = ""  # records: the ArrayRecord shards of python -m pose_jax.data.prepare
  c.data.eval_path = ""  # records: held-out shards for the eval samples ("": none)
  c.data.frames = 81  # video frames, 1 + 4k (the VAE's temporal stride)
  c.data.cache_dir = ""  # gs:// shards are fetched here (local disk; "": $TMPDIR/pose_jax_data)
  c.data.height = 0  # records: the frame size the shards were prepared at (--height, --width)
  c.data.width = 0
  c.data.size = 0  # toy: side of the square toy clips

  c.eval = ml_collections.ConfigDict()
  c.eval.report = True  # toy data: the final teacher-vs-student report on the held-out clips
  c.eval.teacher_steps = 50  # Euler steps (with CFG) of the teacher baseline in the toy report
  c.eval.every = 250  # sample videos + metrics every N steps and at each phase end (0: ends only)
  c.eval.fps = 16
  c.eval.pipeline = ""  # records: a diffusers Wan2.1 I2V folder whose VAE decodes the samples
  c.lock()
  return c
