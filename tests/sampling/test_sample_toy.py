"""``python -m pose_jax.sampling --ckpt=TOY_WORKDIR --image --prompt``: a toy run sampled from its
workdir alone, conditioned and sampled as the run's own evaluation does.

The workdir is the session's toy reference run (``tests/helpers/toy_runs.py``, shared with the
training tests): what ``python -m pose_jax.main`` writes, held-out clips and all. The CLI runs in
subprocesses, as in ``test_sample.py``.
"""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from pose_jax import data as data_lib
from pose_jax.data import toy as toy_data
from pose_jax.sampling import toy, video_io
from pose_jax.sampling.loading import load_dit
from pose_jax.sampling.pipeline import I2VPipeline
from pose_jax.training import evals
from tests.sampling.test_sample import error_line, sample_cli

CLIP = "coffee/pan_left/0"  # a held-out photo clip: the eval split only


@pytest.fixture(scope="module")
def run(toy_reference_run):
  """``(workdir, meta, eval batch)``: the eval batch as the trainer reads it."""
  workdir = toy_reference_run[0]
  meta = toy.run_meta(str(workdir))
  config = ml_collections.ConfigDict(meta["config"])
  iterator, batch = data_lib.from_config(config, str(workdir))  # built by the run: not rebuilt
  iterator.close()
  return workdir, meta, batch


def first_frame(meta, batch, i: int) -> np.ndarray:
  """Clip i's first frame, uint8, from its (lossless) toy latents."""
  real = evals.toy_decoder(meta["config"]["data"])(batch["latents"][i : i + 1])[0, 0]
  frame = np.round((real + 1.0) * 127.5).astype(np.uint8)
  np.testing.assert_allclose(toy_data.to_unit(frame), real, atol=1e-6)  # exactly that frame
  return frame


def eval_one_step(pipe, meta, batch, i: int, noise) -> np.ndarray:
  """The toy evaluation's one-step student sample of clip i (``evals.EvalSampler`` on the
  pipeline's DiT, its batch cut to the clip, its noise set to ``noise``), as uint8 frames."""
  clip = {k: np.asarray(v)[i : i + 1] for k, v in batch.items() if k != "neg_text"}
  decode = evals.toy_decoder(meta["config"]["data"])
  sampler = evals.EvalSampler("unused", clip, decode, pipe.graphdef, every=0)
  video = evals._to_unit(decode(np.asarray(sampler._sample(pipe.params, noise, sampler.batch))))[0]
  return video_io.to_uint8(video)


def test_no_flag_sample_is_the_eval_s_one_step_sample(run, tmp_path):
  workdir, meta, batch = run
  keys = [str(k) for k in np.asarray(batch["key"]).ravel()]
  i = keys.index(CLIP)
  caption = str(np.asarray(batch["caption"]).ravel()[i])
  Image.fromarray(first_frame(meta, batch, i)).save(tmp_path / "frame.png")
  r = sample_cli(f"--ckpt={workdir}", "--image=frame.png", f"--prompt={caption}", cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "warning" not in r.stderr, r.stderr[-3000:]
  frames, side = meta["config"]["data"]["frames"], meta["config"]["data"]["size"]
  log = r.stdout
  assert f"wrote sample.mp4: {frames} frames {side}x{side}" in log and "strip sample.png" in log
  assert "student 1 step(s)" in log and f"of its config (seed {meta['config']['seed']})" in log
  assert video_io.read_mp4(str(tmp_path / "sample.mp4")).shape == (frames, side, side, 3)
  strip = np.asarray(Image.open(tmp_path / "sample.png"))
  assert strip.shape == (side, frames * side, 3)
  # The CLI's noise for its one sample (item 0 of seed 0) through the eval's own sampler.
  pipe = I2VPipeline.from_model(toy.ToyStack.from_meta(meta), load_dit(str(workdir))[0])
  noise = pipe.make_noise(pipe.latent_shape(1, frames, side, side), seed=0)
  want = eval_one_step(pipe, meta, batch, i, noise)
  got = np.stack(np.split(strip, frames, axis=1))  # the strip holds every frame, lossless
  diff = np.abs(got.astype(int) - want.astype(int))
  print(f"CLI strip vs the eval's one-step sample: max diff {diff.max()} (uint8)")
  assert diff.max() <= 1 and want.std() > 0


def test_toy_stack_conditions_as_the_toy_data(run):
  """Every held-out clip (photos and footage): its first frame and caption give the eval
  batch's cond, image and text tokens (a wrong codec, encoder seed, tokenizer or frame count
  would not)."""
  _, meta, batch = run
  stack = toy.ToyStack.from_meta(meta)
  frames, side = meta["config"]["data"]["frames"], meta["config"]["data"]["size"]
  images = [first_frame(meta, batch, i) for i in range(len(batch["latents"]))]
  captions = [str(c) for c in np.asarray(batch["caption"]).ravel()]
  c = stack.encode(images, captions, num_frames=frames, height=side, width=side)
  for name, got in (("cond", c.cond), ("image", c.image_tokens), ("text", c.text_tokens)):
    np.testing.assert_allclose(np.asarray(got), batch[name], atol=1e-5, err_msg=name)
  assert stack.prompt_warnings(captions) == []
  neg = stack.encode(images[0], "", num_frames=frames, height=side, width=side).text_tokens
  np.testing.assert_allclose(np.asarray(neg)[0], batch["neg_text"][0], atol=1e-6)


def test_a_photo_is_cut_as_the_toy_cuts_its_clips():
  """A photo of any size becomes the toy's frame as the toy data cuts windows from its photos:
  Lanczos to the short side (``toy._resize``), then the centre window."""
  photo = toy_data.load_photo("coffee")  # 400 x 600
  want = toy_data._resize(photo, 32)
  y, x = (want.shape[0] - 32) // 2, (want.shape[1] - 32) // 2
  np.testing.assert_array_equal(toy.fit_frame(photo, 32, 32), want[y : y + 32, x : x + 32])
  tall = toy.fit_frame(photo.transpose(1, 0, 2), 32, 32)
  assert tall.shape == (32, 32, 3)
  assert toy.fit_frame(photo, 48, 32).shape == (48, 32, 3)


def test_unknown_words_warn_and_the_teacher_takes_the_run_s_settings(run, tmp_path):
  workdir, meta, _ = run
  Image.fromarray(toy_data.load_photo("coffee")).save(tmp_path / "photo.jpg")
  prompt = "a photo of a kitten on a sofa, the camera pans left"
  args = [f"--ckpt={workdir}", f"--image={tmp_path / 'photo.jpg'}", f"--prompt={prompt}"]
  r = sample_cli(*args, "--teacher", "--steps=2", f"--out={tmp_path / 't.mp4'}")
  assert r.returncode == 0, r.stderr[-3000:]
  warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "'kitten', 'sofa'" in warnings[0] and "<unk>" in warnings[0]
  d = toy.defaults(meta)
  assert "teacher euler 2 step(s)" in r.stdout and f"{d['fps']} fps" in r.stdout
  assert video_io.read_mp4(str(tmp_path / "t.mp4")).shape == (d["frames"], *d["size"], 3)
  assert (tmp_path / "t.png").exists()


@pytest.mark.parametrize(
  "extra,message",
  [
    (["--pipeline=somewhere"], "--pipeline: --ckpt={w} is a toy run"),
    (["--max_area=4096"], "--max_area: a toy run samples at its data.size"),
    (["--size=30x32"], "--size=30x32: height=30 must be positive multiples of 4"),
  ],
)
def test_toy_flag_errors(run, tmp_path, extra, message):
  workdir = run[0]
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
  r = sample_cli(f"--ckpt={workdir}", f"--image={tmp_path / 'x.png'}", "--prompt=a", *extra)
  assert r.returncode == 2 and message.format(w=workdir) in error_line(r), r.stderr[-3000:]
