"""``prepare --pairs``: teacher-made training clips, sampled by the pipeline's own sampler,
written as the same shards as real clips, resumable."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pose_jax.data import make_iterator, read_meta
from pose_jax.data.teacher_clips import make_teacher_clips, read_pairs
from pose_jax.sampling.pipeline import I2VPipeline
from tests.helpers import ROOT
from tests.helpers.tiny import tiny_pipeline

FRAMES, HEIGHT, WIDTH = 5, 32, 48
SAMPLER = dict(steps=3, guidance_scale=4.0, shift=3.0, scheduler="euler")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("teacher")
  tiny_pipeline().save_pretrained(root / "pipe")
  rng = np.random.default_rng(0)
  lines = []
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (40, 64, 3), np.uint8)).save(root / f"im{i}.png")
    lines.append(json.dumps({"image": f"im{i}.png", "prompt": f"a photo, move {i}"}))
  (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
  pipe = I2VPipeline.from_pretrained(str(root / "pipe"))
  return root, pipe, read_pairs(str(root / "pairs.jsonl"))


def _make(pipe, pairs, out, **kw):
  log = []
  meta = make_teacher_clips(
    pipe,
    pairs,
    str(out),
    frames=FRAMES,
    height=HEIGHT,
    width=WIDTH,
    seed=5,
    shard_size=2,
    log=log.append,
    **{**SAMPLER, **kw},
  )
  return meta, log


def test_shards_hold_the_samplers_own_teacher_samples_and_resume(setup, tmp_path):
  root, pipe, pairs = setup
  meta, log = _make(pipe, pairs, tmp_path / "out")
  assert meta["num_examples"] == 3 and meta["shards"] == [
    "shard-00000.array_record",
    "shard-00001.array_record",
  ]
  assert log[-1] == "2 shard(s) sampled, 0 done before"
  batch = next(make_iterator(str(tmp_path / "out"), 3, shuffle=False, with_strings=True))
  assert list(batch["key"]) == ["teacher/0", "teacher/1", "teacher/2"]
  assert batch["caption"][2] == "a photo, move 2"
  # Row 2 is what the pipeline's teacher sampler gives for that pair and row 2 of the seed.
  image = np.asarray(Image.open(root / "im2.png").convert("RGB"))
  size = dict(num_frames=FRAMES, height=HEIGHT, width=WIDTH)
  c = pipe.encode([image], ["a photo, move 2"], **size, negative_prompt="")
  noise = pipe.make_noise(pipe.latent_shape(1, FRAMES, HEIGHT, WIDTH), 5, [2])
  want = np.asarray(pipe.sample_latents(c, noise, mode="teacher", **SAMPLER))[0]
  np.testing.assert_allclose(batch["latents"][2], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(batch["cond"][2], np.asarray(c.cond[0]))
  assert batch["text_mask"][2].sum() > 0 and batch["neg_text"].shape[1:] == batch["text"].shape[1:]
  # Interrupted after shard 0: a rerun samples shard 1 only, to the same bytes.
  shard1 = (tmp_path / "out" / "shard-00001.array_record").read_bytes()
  os.remove(tmp_path / "out" / "progress" / "00001.json")
  os.remove(tmp_path / "out" / "shard-00001.array_record")
  os.remove(tmp_path / "out" / "meta.json")
  meta2, log2 = _make(pipe, pairs, tmp_path / "out")
  assert log2[-1] == "1 shard(s) sampled, 1 done before" and meta2 == meta
  assert (tmp_path / "out" / "shard-00001.array_record").read_bytes() == shard1
  assert read_meta(str(tmp_path / "out"))["source"] == "teacher"


def test_a_rerun_with_other_settings_is_refused(setup, tmp_path):
  _, pipe, pairs = setup
  _make(pipe, pairs[:1], tmp_path / "out")
  with pytest.raises(ValueError, match="other settings .*steps: 3 -> 4"):
    _make(pipe, pairs[:1], tmp_path / "out", steps=4)


def test_bad_pairs_files_are_named(tmp_path):
  (tmp_path / "a.jsonl").write_text('{"image": "x.png"}\n')
  with pytest.raises(ValueError, match=r"a.jsonl:1: expected"):
    read_pairs(str(tmp_path / "a.jsonl"))
  (tmp_path / "b.jsonl").write_text('{"image": "missing.png", "prompt": "p"}\n')
  with pytest.raises(ValueError, match=r"b.jsonl:1: no image file .*missing.png"):
    read_pairs(str(tmp_path / "b.jsonl"))


def test_the_cli_makes_teacher_clips(setup, tmp_path):
  root, _, _ = setup
  cmd = [sys.executable, "-m", "pose_jax.data.prepare", f"--pairs={root / 'pairs.jsonl'}"]
  cmd += [f"--pipeline={root / 'pipe'}", f"--out={tmp_path / 'out'}", f"--frames={FRAMES}"]
  cmd += [f"--height={HEIGHT}", f"--width={WIDTH}", "--steps=2", "--batch_size=2"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "written 3 teacher clip(s) in 1 shard(s)" in proc.stdout, proc.stdout
  bad = subprocess.run(
    [*cmd[:3], f"--videos={root}/*.mp4", *cmd[3:]],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode == 1 and "no --videos/--captions with it" in bad.stderr
