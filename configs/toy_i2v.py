"""The tiny built-in default: a tiny I2V Wan DiT that runs on a CPU in minutes.

python -m pose_jax.main --config=configs/toy_i2v.py
"""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"
  c.model.num_layers = 2
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"
  c.model.attention = "xla"
  c.model.remat = "none"
  c.model.scan_layers = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1, 1)  # (data, fsdp, context, tensor); -1 takes the remaining devices

  c.sample = ml_collections.ConfigDict()
  c.sample.batch = 2
  c.sample.frames = 9  # video frames, 1+4k
  c.sample.height = 64  # pixels (latent = /8)
  c.sample.width = 96
  c.sample.text_len = 512
  c.sample.image_len = 257
  c.sample.repeats = 3
  return c
