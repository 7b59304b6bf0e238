"""``python -m pose_jax.data.prepare``: tiny clips written with PyAV (valid mp4 and webm, too short,
corrupt, uncaptioned) through a tiny random diffusers pipeline folder into shards."""

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from pose_jax.data import make_iterator, read_meta
from pose_jax.data.prepare import (
  ClipError,
  check_inputs,
  encode_clip,
  format_summary,
  read_captions,
  read_clip,
)
from tests.helpers import ROOT
from tests.helpers.numerics import rel_err
from tests.helpers.tiny import Z, tiny_pipeline

FRAMES, HEIGHT, WIDTH = 5, 32, 48


def make_frames(num: int, height: int = 40, width: int = 64) -> np.ndarray:
  """Smooth gradients whose brightness steps up 16 per frame (so frames can be told apart)."""
  y, x = np.mgrid[:height, :width]
  base = np.stack([x * 100 / width, y * 100 / height, (x + y) * 50 / (height + width)], -1)
  return np.stack([np.clip(base + 16 * i + 20, 0, 255) for i in range(num)]).astype(np.uint8)


def write_video(path: str, frames: np.ndarray, codec: str = "libx264", fps: int = 8) -> None:
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  d = tmp_path_factory.mktemp("videos")
  write_video(str(d / "valid.mp4"), make_frames(10))
  write_video(str(d / "clip.webm"), make_frames(6, 48, 40), codec="libvpx")
  write_video(str(d / "short.mp4"), make_frames(3))
  write_video(str(d / "nocap.mp4"), make_frames(6))
  (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
  captions = {
    "valid.mp4": "a cat runs on the beach",
    "clip.webm": "red car at night",
    "short.mp4": "a dog",
    "corrupt.mp4": "blue city",
    "ghost.mp4": "no such file",
  }
  with open(d / "captions.jsonl", "w") as f:
    f.writelines(json.dumps({"video": k, "caption": v}) + "\n" for k, v in captions.items())
  return d


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
  pipe = tiny_pipeline()
  folder = tmp_path_factory.mktemp("pipe")
  pipe.save_pretrained(folder)
  return pipe, str(folder)


def test_read_clip(clips):
  clip = read_clip(str(clips / "valid.mp4"), FRAMES, HEIGHT, WIDTH)
  assert clip.shape == (FRAMES, HEIGHT, WIDTH, 3) and clip.dtype == np.uint8
  steps = np.diff(clip.reshape(FRAMES, -1).mean(-1).astype(np.float64))
  np.testing.assert_allclose(steps, 16, atol=2)  # consecutive frames, in order
  # Covers 32x48 from 40x64: scale 0.8 -> 32x51, centre crop: the gradient survives (lossy codec).
  want = make_frames(1)[0].astype(np.float64)
  assert abs(clip[0].mean() - want.mean()) < 3
  resampled = read_clip(str(clips / "valid.mp4"), FRAMES, HEIGHT, WIDTH, fps=4)  # every 2nd
  steps = np.diff(resampled.reshape(FRAMES, -1).mean(-1).astype(np.float64))
  np.testing.assert_allclose(steps, 32, atol=3)
  assert read_clip(str(clips / "clip.webm"), FRAMES, HEIGHT, WIDTH).shape == (FRAMES, 32, 48, 3)
  with pytest.raises(ClipError, match="too_short: 3 of 5"):
    read_clip(str(clips / "short.mp4"), FRAMES, HEIGHT, WIDTH)
  with pytest.raises(ClipError, match="unreadable"):
    read_clip(str(clips / "corrupt.mp4"), FRAMES, HEIGHT, WIDTH)
  with pytest.raises(ClipError, match="unreadable"):
    read_clip(str(clips / "missing.mp4"), FRAMES, HEIGHT, WIDTH)
  assert read_captions(str(clips / "captions.jsonl"))["clip.webm"] == "red car at night"


def test_empty_video_file_is_named(tmp_path):
  (tmp_path / "empty.mp4").write_bytes(b"")
  with pytest.raises(ClipError, match=r"unreadable: empty file \(0 bytes\)"):
    read_clip(str(tmp_path / "empty.mp4"), FRAMES, HEIGHT, WIDTH)


def test_summary_names_captions_without_a_video():
  summary = {
    "written": 1,
    "shards": ["shard-00000.array_record"],
    "skipped": 0,
    "counts": {"unreadable": 0},
    "skipped_videos": {},
    "captions_without_video": ["ghost.mp4"],
  }
  assert "captions without a video: 1: ghost.mp4" in format_summary(summary)
  summary["captions_without_video"] = [f"ghost{i:02d}.mp4" for i in range(13)]
  line = format_summary(summary).splitlines()[-1]
  assert line.startswith("captions without a video: 13: ghost00.mp4, ghost01.mp4")
  assert "ghost09.mp4, ... and 3 more" in line and "ghost10" not in line


def write_captions(path, *lines: str) -> str:
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def test_check_inputs(clips, tmp_path):
  caps = str(clips / "captions.jsonl")
  videos, captions = check_inputs([f"{clips}/*.mp4"], caps, 5, 32, 48)
  assert [os.path.basename(v) for v in videos] == [
    "corrupt.mp4",
    "nocap.mp4",
    "short.mp4",
    "valid.mp4",
  ]
  assert captions["valid.mp4"] == "a cat runs on the beach"
  bad = [
    (([f"{clips}/*.avi"], caps, 5, 32, 48), rf"--videos={clips}/\*.avi: matches no file"),
    (([f"{clips}/*.mp4"], caps, 8, 32, 48), r"--frames=8 must be 1 \+ 4k"),
    (([f"{clips}/*.mp4"], caps, 5, 0, 48), "--height=0 must be a positive multiple of 16"),
    (([f"{clips}/*.mp4"], caps, 5, 32, 40), "--width=40 must be a positive multiple of 16"),
    (([f"{clips}/*.mp4"], str(tmp_path / "nope.jsonl"), 5, 32, 48), "nope.jsonl: no such file"),
  ]
  for args, match in bad:
    with pytest.raises(ValueError, match=match):
      check_inputs(*args)
  good = '{"video": "a.mp4", "caption": "a cat"}'
  for n, line in enumerate(['{"video": "a.mp4"}', '["a.mp4", "a cat"]', "not json"]):
    path = write_captions(tmp_path / f"caps{n}.jsonl", good, "", line)
    with pytest.raises(ValueError, match=rf"caps{n}.jsonl:3: expected"):
      check_inputs([f"{clips}/*.mp4"], path, 5, 32, 48)


@pytest.mark.parametrize(
  ("module", "doc", "required"),
  [
    ("pose_jax.data.prepare", "Encode real clips", ["out", "pipeline", "videos", "captions"]),
    ("pose_jax.data.toy", "Toy I2V data", ["out"]),
  ],
)
def test_data_clis_help_and_stray_arguments(module, doc, required, tmp_path):
  def cli(*args):
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)

  r = cli("--help")
  assert r.returncode == 1, r.stderr  # absl exits 1 after --help
  assert r.stdout.startswith(doc)
  for name in required:
    assert f"--{name}:" in r.stdout, name
  given = [f"--{name}={tmp_path / name}" for name in required]
  r = cli(*given, "stray")
  assert r.returncode == 1 and "unexpected arguments: ['stray']" in r.stderr, r.stderr
  assert not os.listdir(tmp_path)  # stopped before writing anything
  r = cli(*given[1:])
  assert r.returncode == 1 and f"Flag --{required[0]} must have a value" in r.stderr, r.stderr


def prepare_cli(*args: str) -> subprocess.CompletedProcess:
  cmd = [sys.executable, "-m", "pose_jax.data.prepare", *args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["empty_glob", "bad_captions", "bad_frames"])
def test_prepare_cli_checks_inputs_before_loading_the_pipeline(case, clips, tmp_path):
  garbage = tmp_path / "pipe"  # loading it would fail: the checks must come first
  garbage.mkdir()
  (garbage / "model_index.json").write_text("garbage")
  caps = str(clips / "captions.jsonl")
  if case == "bad_captions":
    caps = write_captions(tmp_path / "caps.jsonl", '{"video": "valid.mp4", "caption": "a"}', "{")
  videos = f"{clips}/*.avi" if case == "empty_glob" else f"{clips}/*.mp4"
  frames = 8 if case == "bad_frames" else FRAMES
  r = prepare_cli(
    f"--videos={videos}",
    f"--captions={caps}",
    f"--out={tmp_path / 'out'}",
    f"--pipeline={garbage}",
    f"--frames={frames}",
    f"--height={HEIGHT}",
    f"--width={WIDTH}",
  )
  want = {
    "empty_glob": f"error: --videos={videos}: matches no file",
    "bad_captions": f"error: {caps}:2: expected {{'video': ..., 'caption': ...}}",
    "bad_frames": "error: --frames=8 must be 1 + 4k",
  }[case]
  assert r.returncode != 0 and r.stderr.startswith(want), r.stderr[-3000:]
  assert len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]  # one line, no traceback
  assert not (tmp_path / "out").exists()


def test_prepare_cli_fails_when_every_video_is_skipped(clips, pipeline, tmp_path):
  (tmp_path / "empty.mp4").write_bytes(b"")
  ghosts = [f"ghost{i:02d}.mp4" for i in range(12)]
  rows = [("empty.mp4", "nothing"), ("short.mp4", "a dog"), *((g, "gone") for g in ghosts)]
  caps = write_captions(
    tmp_path / "caps.jsonl", *(json.dumps({"video": v, "caption": c}) for v, c in rows)
  )
  out = tmp_path / "shards"
  r = prepare_cli(
    f"--videos={tmp_path}/*.mp4,{clips}/short.mp4",
    f"--captions={caps}",
    f"--out={out}",
    f"--pipeline={pipeline[1]}",
    f"--frames={FRAMES}",
    f"--height={HEIGHT}",
    f"--width={WIDTH}",
    "--fps=0",  # native frames: short.mp4 has 3 of the 5
  )
  assert r.returncode != 0, r.stderr[-3000:]
  assert "written 0 example(s) in 0 shard(s)" in r.stdout
  assert "empty.mp4: unreadable (empty file (0 bytes))" in r.stdout
  assert "captions without a video: 12: ghost00.mp4, " in r.stdout
  assert "ghost09.mp4, ... and 2 more" in r.stdout
  assert r.stderr.strip().splitlines()[-1] == (
    f"error: 0 examples written, every video was skipped (see {out / 'summary.json'})"
  )
  assert json.loads((out / "summary.json").read_text())["captions_without_video"] == ghosts


def test_prepare_cli(clips, pipeline, tmp_path):
  pipe, folder = pipeline
  out = tmp_path / "shards"
  cmd = [
    sys.executable,
    "-m",
    "pose_jax.data.prepare",
    f"--videos={clips}/*.mp4,{clips}/*.webm",
    f"--captions={clips}/captions.jsonl",
    f"--out={out}",
    f"--pipeline={folder}",
    f"--frames={FRAMES}",
    f"--height={HEIGHT}",
    f"--width={WIDTH}",
    "--shard_size=1",
  ]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # By default clips are resampled to Wan's 16 fps (these are 8 fps: each frame twice), so
  # the 3-frame short.mp4 (0.375 s) now covers the 5 frames (0.25 s) it is asked for.
  assert "valid.mp4: ok (8 fps resampled to 16 fps)" in proc.stdout, proc.stdout
  assert "written 3 example(s) in 3 shard(s)" in proc.stdout
  summary = json.loads((out / "summary.json").read_text())
  assert summary["written"] == 3
  assert summary["counts"] == {"unreadable": 1, "too_short": 0, "no_caption": 1, "encode_failed": 0}
  reasons = {os.path.basename(p): s["reason"] for p, s in summary["skipped_videos"].items()}
  assert reasons == {"corrupt.mp4": "unreadable", "nocap.mp4": "no_caption"}
  assert summary["captions_without_video"] == ["ghost.mp4"]
  assert read_meta(str(out))["shapes"]["cond"] == [2, 4, 6, 4 + Z]

  batch = next(
    make_iterator(str(out), 3, shuffle=False, process_index=0, process_count=1, with_strings=True)
  )
  assert sorted(batch["key"]) == ["clip.webm", "short.mp4", "valid.mp4"]
  assert batch["latents"].shape == (3, 2, 4, 6, Z) and batch["text"].shape == (3, 512, 32)
  assert batch["neg_text"].shape == (3, 512, 32) and batch["image"].shape == (3, 17, 24)
  i = list(batch["key"]).index("valid.mp4")
  assert batch["caption"][i] == "a cat runs on the beach" and batch["text_mask"][i].sum() == 7

  # Latents are the pipeline's: normalised posterior mean of the diffusers VAE.
  clip = read_clip(str(clips / "valid.mp4"), FRAMES, HEIGHT, WIDTH, fps=16)
  video = torch.from_numpy(clip.astype(np.float32) / 127.5 - 1.0).permute(3, 0, 1, 2)[None]
  with torch.no_grad():
    mu = pipe.vae.encode(video).latent_dist.mean
  mean = torch.tensor(pipe.vae.config.latents_mean).view(1, Z, 1, 1, 1)
  std = torch.tensor(pipe.vae.config.latents_std).view(1, Z, 1, 1, 1)
  ref = ((mu - mean) / std)[0].permute(1, 2, 3, 0).numpy()
  assert rel_err(batch["latents"][i], ref) < 1e-4
  # cond / image / text are exactly what ConditioningStack.encode gives for the first frame.
  from pose_jax.conditioning import ConditioningStack

  stack = ConditioningStack.from_pretrained(folder)
  want = encode_clip(stack, clip, "a cat runs on the beach", "valid.mp4")
  for k in ("cond", "image", "text"):
    assert rel_err(batch[k][i], want[k]) < 1e-5, k
