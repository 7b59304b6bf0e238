"""Sample videos written during training carry an index naming each one's prompt, condition
image and weights; the toy report scores motion by the camera move."""

import json
import types

import jax
import numpy as np
from flax import nnx
from PIL import Image

from pose_jax.data import toy
from pose_jax.data.toy_codec import ToyCodec
from pose_jax.models.wan import WanTransformer, preset
from pose_jax.sampling import video_io
from pose_jax.training import evals

SIZE, FRAMES = 32, 5


def eval_batch() -> dict:
  """Three toy clips of a held-out photo, as ``data.from_config`` gives them (with strings)."""
  codec, image = ToyCodec(), toy.load_photo("coffee")
  moves = ["pan_left", "zoom_in", "static"]
  clips = [
    toy.camera_clip(image, m, SIZE, FRAMES, np.random.default_rng(i)) for i, m in enumerate(moves)
  ]
  video = toy.to_unit(np.stack(clips))
  rng = np.random.default_rng(0)
  return {
    "latents": codec.encode(video),
    "cond": codec.condition(video[:, 0], FRAMES),
    "text": rng.normal(size=(3, 4, 32)).astype(np.float32),
    "image": rng.normal(size=(3, 2, 32)).astype(np.float32),
    "caption": np.array([toy.caption("coffee", m) for m in moves]),
    "key": np.array([f"coffee/{m}/0" for m in moves]),
  }


def test_sample_index_names_prompt_condition_image_and_weights(tmp_path):
  z = ToyCodec().z_dim
  cfg = preset("toy", num_layers=1, in_channels=2 * z + 4, out_channels=z)
  graphdef, params = nnx.split(WanTransformer(cfg, rngs=nnx.Rngs(0)))
  batch = eval_batch()
  sampler = evals.EvalSampler(
    str(tmp_path), batch, evals.toy_decoder({}), graphdef, 0, max_videos=2, fps=4
  )
  ema = jax.tree.map(lambda x: x * 0.5, params)
  metrics = sampler(7, types.SimpleNamespace(params={"student": params}, ema=ema))
  assert "eval/student/first_frame_psnr" in metrics and "eval/ema/flicker" in metrics
  folder = tmp_path / "samples" / "step_7"
  index = json.loads((folder / "index.json").read_text())
  assert index["step"] == 7 and index["fps"] == 4
  rows = index["videos"]
  assert [(r["weights"], r["video"]) for r in rows] == [
    ("student", "student_0.mp4"),
    ("student", "student_1.mp4"),
    ("ema", "ema_0.mp4"),
    ("ema", "ema_1.mp4"),
  ]
  for r in rows:
    i = r["strip_row"]
    assert r["step"] == 7 and r["prompt"] == str(batch["caption"][i])
    assert r["key"] == str(batch["key"][i]) and r["strip"] == f"{r['weights']}.png"
    assert video_io.read_mp4(str(folder / r["video"])).shape == (FRAMES, SIZE, SIZE, 3)
    cond = np.asarray(Image.open(folder / r["condition_image"]))
    first = (ToyCodec().decode(batch["latents"][i : i + 1])[0, 0] + 1) * 127.5  # lossless
    assert cond.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(cond, np.round(first), atol=1)  # the condition image itself
  assert sorted(p.name for p in folder.glob("condition_*.png")) == [
    "condition_0.png",
    "condition_1.png",
  ]
  # The eval batch and noise are arguments of the sampling program, not constants baked into
  # it (closed over, the noise alone would be one hex constant line of 2 x its bytes; ~200 MB
  # of such constants at 480p). The model's own RoPE tables are ~20 kB lines.
  text = sampler._sample.lower(params, sampler.noise, sampler.batch).as_text()
  assert max(len(line) for line in text.splitlines()) < 2 * sampler.noise.nbytes


def test_toy_metrics_score_the_captioned_move():
  batch = eval_batch()
  codec = ToyCodec()
  real = codec.decode(batch["latents"])
  moves = evals.toy_moves(batch)
  assert moves == ["pan_left", "zoom_in", "static"]
  m = evals.toy_metrics(real, real, moves)
  assert m["motion_accuracy"] == 1.0 and m["first_frame_psnr"] == float("inf")
  wrong = evals.toy_metrics(real[::-1], real, moves)  # static where pan_left is asked, ...
  assert wrong["motion_accuracy"] == 1 / 3  # only zoom_in (the middle clip) still matches
  assert evals.toy_moves({"latents": real}) is None
  assert "motion_accuracy" not in evals.toy_metrics(real, real, None)
