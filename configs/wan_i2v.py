"""Wan2.1-I2V-14B. Variants: ``--config=configs/wan_i2v.py:480p`` (default) or ``:720p``.

Training sections (pose / optim / data / ckpt) arrive with the training issue; this file already
fixes the model, the mesh and the video sizes.
"""

import ml_collections

SIZES = {"480p": (480, 832, 3.0), "720p": (720, 1280, 5.0)}  # height, width, flow shift


def get_config(arg=None):
  variant = arg or "480p"
  if variant not in SIZES:
    raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(SIZES)}")
  height, width, _ = SIZES[variant]
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

  c.sample = ml_collections.ConfigDict()
  c.sample.batch = 64  # one video per chip on a 64-chip slice (batch is sharded over data x fsdp)
  c.sample.frames = 81
  c.sample.height = height
  c.sample.width = width
  c.sample.text_len = 512
  c.sample.image_len = 257
  c.sample.repeats = 1
  return c
