"""The toy codec is lossless on every frame, keeps a clip's camera move, and the I2V layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pose_jax import evaluators as ev
from pose_jax.data import toy
from pose_jax.data.example import MASK_CHANNELS
from pose_jax.data.toy_codec import ToyCodec

SIZE, FRAMES = 48, 9


@pytest.fixture(scope="module")
def videos() -> tuple[list[str], np.ndarray]:
  """Every move over a held-out photo, in [-1, 1]: ``[7, T, H, W, 3]``."""
  image = toy.load_photo("coffee")
  moves = list(toy.MOVES)
  clips = [
    toy.camera_clip(image, m, SIZE, FRAMES, np.random.default_rng(i)) for i, m in enumerate(moves)
  ]
  return moves, toy.to_unit(np.stack(clips))


def test_round_trip_keeps_every_frame_and_the_motion(videos):
  moves, x = videos
  codec = ToyCodec()
  z = codec.encode(x)
  f = codec.spatial_factor
  assert z.shape == (len(moves), FRAMES, SIZE // f, SIZE // f, codec.z_dim)
  y = codec.decode(z)
  assert y.shape == x.shape
  mse = float(np.mean((y - x) ** 2))
  assert mse == 0.0 or 10 * np.log10(4 / mse) > 60  # lossless (PSNR > 60 dB on [-1, 1])
  found = ev.camera_move((y + 1) / 2).move
  assert list(found) == moves


def test_latent_channels_are_the_pixels_of_a_block(videos):
  _, x = videos
  codec = ToyCodec(spatial_factor=2, scale=0.5)
  z = codec.encode(x)
  assert codec.z_dim == 12 and z.shape[-1] == 12
  np.testing.assert_array_equal(z[0, 3, 5, 7], 0.5 * x[0, 3, 10:12, 14:16].reshape(-1))
  np.testing.assert_allclose(codec.decode(z), x, atol=1e-6)


def test_jax_in_jax_out_and_jit(videos):
  _, x = videos
  codec = ToyCodec()
  y = jax.jit(lambda v: codec.decode(codec.encode(v)))(jnp.asarray(x))
  assert isinstance(y, jax.Array)
  np.testing.assert_allclose(np.asarray(y), x, atol=1e-6)


def test_condition_has_the_wan_i2v_layout(videos):
  _, x = videos
  codec = ToyCodec()
  cond = codec.condition(x[:, 0], FRAMES)
  z = codec.z_dim
  f = codec.spatial_factor
  assert cond.shape == (len(x), FRAMES, SIZE // f, SIZE // f, MASK_CHANNELS + z)
  assert np.all(cond[:, 0, ..., :MASK_CHANNELS] == 1) and np.all(cond[:, 1:] == 0)
  np.testing.assert_array_equal(cond[:, 0, ..., MASK_CHANNELS:], codec.encode(x[:, :1])[:, 0])
  cond_jax = codec.condition(jnp.asarray(x[:, 0]), FRAMES)
  np.testing.assert_allclose(np.asarray(cond_jax), cond)


def test_bad_shapes_name_the_problem(videos):
  _, x = videos
  codec = ToyCodec(spatial_factor=4)
  with pytest.raises(ValueError, match="multiples of 4"):
    codec.encode(x[:, :, :46])
  with pytest.raises(ValueError, match=r"latents must be \[B, T, h, w, 48\]"):
    codec.decode(np.zeros((1, 2, 3, 3, 12), np.float32))
  with pytest.raises(ValueError, match="spatial_factor=0"):
    ToyCodec(spatial_factor=0)


def test_condition_on_every_frame_repeats_the_image_and_keeps_the_mask(videos):
  _, x = videos
  codec = ToyCodec(condition_frames="every")
  cond = codec.condition(x[:, 0], FRAMES)
  first = codec.encode(x[:, :1])[:, 0]
  for t in range(FRAMES):
    np.testing.assert_array_equal(cond[:, t, ..., MASK_CHANNELS:], first)
  assert np.all(cond[:, 0, ..., :MASK_CHANNELS] == 1) and np.all(
    cond[:, 1:, ..., :MASK_CHANNELS] == 0
  )
  np.testing.assert_allclose(np.asarray(codec.condition(jnp.asarray(x[:, 0]), FRAMES)), cond)
  assert codec.meta()["condition_frames"] == "every" != ToyCodec().meta()["condition_frames"]


def test_from_config_reads_the_data_keys():
  import ml_collections

  data = ml_collections.ConfigDict({"codec_factor": 2, "codec_condition": "every"})
  assert ToyCodec.from_config(data) == ToyCodec(spatial_factor=2, condition_frames="every")
  assert ToyCodec.from_config(ml_collections.ConfigDict({})) == ToyCodec()
  with pytest.raises(ValueError, match="condition_frames='last'"):
    ToyCodec(condition_frames="last")
