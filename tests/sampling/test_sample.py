"""``python -m pose_jax.sampling`` end to end on the tiny pipeline folder, its errors, the video
writers, and sharded sampling on the 8 fake CPU devices.

The CLI runs in subprocesses, as users run it: its absl flags are defined at import, on the one
global flag registry that other CLIs' modules imported by the test session share.
"""

import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest
from PIL import Image

from pose_jax import sharding as shd
from pose_jax.conditioning import fit_area
from pose_jax.convert import importer
from pose_jax.sampling import video_io
from pose_jax.sampling.pipeline import I2VPipeline
from tests.helpers import ROOT
from tests.helpers.tiny import make_image, tiny_pipeline, write_train_workdir


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("sample")
  tiny_pipeline().save_pretrained(root / "pipe")
  importer.import_checkpoint(str(root / "pipe" / "transformer"), root / "ckpt", progress=False)
  write_train_workdir(str(root / "pipe"), root / "work")
  Image.fromarray(make_image()).save(root / "photo.png")
  Image.fromarray(make_image(40, 30)).save(root / "tall.jpg", quality=95)
  (root / "corrupt.png").write_bytes((root / "photo.png").read_bytes()[:60])
  (root / "notes.txt").write_text("not an image")
  return root


def sample_cli(*args, cwd=ROOT) -> subprocess.CompletedProcess:
  """``python -m pose_jax.sampling ARGS`` (the test's 8 fake CPU devices) run in ``cwd``: status
  and output."""
  env = dict(
    os.environ,
    # The runs compile the same encoders: share them through JAX's persistent cache (the one
    # tests/helpers/toy_runs.py uses).
    JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "pose_jax_tests_jax_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  cmd = [sys.executable, "-m", "pose_jax.sampling", *args]
  return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def cli(env, *args) -> subprocess.CompletedProcess:
  return sample_cli(f"--pipeline={env / 'pipe'}", "--prompt=a cat on the beach", *args)


def error_line(r: subprocess.CompletedProcess) -> str:
  """The one line a failed run ends with; no traceback before it."""
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  line = r.stderr.strip().splitlines()[-1]
  assert line.startswith("error: "), r.stderr[-3000:]
  return line


def test_student_from_model_checkpoint_writes_mp4_and_strip(env, tmp_path):
  out, strip = tmp_path / "v.mp4", tmp_path / "s.png"
  args = [f"--ckpt={env / 'ckpt'}", f"--image={env / 'photo.png'}", "--frames=5", "--size=32x48"]
  r = cli(env, *args, f"--out={out}", f"--strip={strip}")
  assert r.returncode == 0, r.stderr[-3000:]
  log = r.stdout
  assert f"model checkpoint {env / 'ckpt'}" in log and f"wrote {out}: 5 frames 32x48" in log
  frames = video_io.read_mp4(str(out))
  assert frames.shape == (5, 32, 48, 3)
  assert np.asarray(Image.open(strip)).shape == (32, 5 * 48, 3)
  # The file holds the pipeline's video: as close to it as the same frames encoded here.
  pipe = I2VPipeline.from_pretrained(str(env / "pipe"), str(env / "ckpt"))
  noise = pipe.make_noise(pipe.latent_shape(1, 5, 32, 48), seed=0)  # the CLI's noise for item 0
  assert noise.shape == (1, 2, 4, 6, 4)
  image = video_io.read_image(str(env / "photo.png"))
  video = pipe(image, "a cat on the beach", num_frames=5, height=32, width=48, noise=noise)[0]
  want = video_io.to_uint8(video)
  video_io.write_mp4(str(tmp_path / "want.mp4"), want)
  again = video_io.read_mp4(str(tmp_path / "want.mp4"))
  psnr = lambda a: 10 * np.log10(255.0**2 / np.mean((a - want.astype(float)) ** 2))
  assert psnr(frames.astype(float)) >= psnr(again.astype(float)) - 0.5 > 15.0


def test_teacher_euler_from_the_pipeline_transformer_fits_area(env, tmp_path):
  out = tmp_path / "t.mp4"
  args = ["--teacher", "--steps=2", "--cfg=2.0", "--scheduler=euler", "--negative_prompt=red car"]
  args += [f"--image={env / 'tall.jpg'}", "--frames=1", "--max_area=2000", f"--out={out}"]
  r = cli(env, *args)
  assert r.returncode == 0, r.stderr[-3000:]
  h, w = fit_area((40, 30), 2000)
  assert (h, w) == (48, 32)
  log = r.stdout
  assert "pipeline's own DiT" in log and f"1 frames {h}x{w}" in log and "teacher euler 2" in log
  assert video_io.read_mp4(str(out)).shape == (1, h, w, 3)


def test_prompts_file_from_workdir_ema_sharded(env, tmp_path):
  listing = tmp_path / "prompts.tsv"
  listing.write_text(
    f"# image<TAB>prompt\n{env / 'photo.png'}\ta red car\n\n{env / 'photo.png'}\ta dog\n"
  )
  args = [f"--ckpt={env / 'work'}", "--which=ema", f"--prompts_file={listing}", "--frames=5"]
  out = tmp_path / "b.mp4"
  args += ["--size=32x32", "--batch_size=2", "--mesh=(1,-1,1,1)", f"--out={out}"]
  r = cli(env, *args)  # --prompt (given by cli) with a file
  assert r.returncode == 2 and "--prompts_file replaces --image/--prompt" in error_line(r)
  r = sample_cli(f"--pipeline={env / 'pipe'}", *args)
  assert r.returncode == 0, r.stderr[-3000:]
  log = r.stdout
  assert "ema of train step" in log and "batch of 2" in log
  for i in range(2):
    assert video_io.read_mp4(str(tmp_path / f"b_{i:03d}.mp4")).shape == (5, 32, 32, 3)


def test_sharded_sample_equals_unsharded(env):
  image = make_image()
  prompts = ["a cat", "a dog", "red car", "blue car", "the beach", "city night", "rain", "sunset"]
  mesh = shd.make_mesh((1, -1, 1, 1))
  plain = I2VPipeline.from_pretrained(str(env / "pipe"), str(env / "ckpt"))
  sharded = I2VPipeline.from_pretrained(str(env / "pipe"), str(env / "ckpt"), mesh=mesh)
  kernel = sharded.params["blocks"]["attn1"]["to_q"]["kernel"][...]
  assert (
    kernel.sharding.spec == jax.P(None, ("fsdp", "context"), "tensor")
    and len(kernel.devices()) == 8
  )
  kw = dict(num_frames=5, height=32, width=32, seed=3, output_type="latent")
  a = plain(image, prompts, **kw)
  b = sharded(image, prompts, **kw)  # the batch of 8 split over the 8 devices
  assert len(b.sharding.device_set) == 8 and b.addressable_shards[0].data.shape[0] == 1
  a, b = np.asarray(a), np.asarray(b)
  print(f"sharded vs unsharded latents: max abs diff {np.abs(b - a).max():.1e}")
  np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)
  # Workdir loading straight into the mesh gives the same parameters.
  work = I2VPipeline.from_pretrained(str(env / "pipe"), str(env / "work"), mesh=mesh)
  w = work.params["blocks"]["ffn"]["proj_in"]["kernel"][...]
  assert w.sharding.spec == jax.P(None, ("fsdp", "context"), "tensor")


@pytest.mark.parametrize(
  "args,message,status",
  [
    (["--image={d}/missing.png"], "--image: {d}/missing.png: no such file", 2),
    (["--image={d}/corrupt.png"], "--image: {d}/corrupt.png: cannot read the image", 2),
    (["--image={d}/notes.txt"], "--image: {d}/notes.txt: not an image", 2),
    (["--image={d}/photo.png", "--size=40x48"], "--size=40x48: height=40 must be positive mult", 2),
    (["--image={d}/photo.png", "--size=32"], "--size=32: expected HxW", 2),
    (["--image={d}/photo.png", "--frames=8"], "--frames=8: must be 1 + 4k", 2),
    (["--image={d}/photo.png", "--frames=x"], "flag --frames=x: invalid literal for int()", 2),
    (["--image={d}/photo.png", "--cfg=5"], "--cfg=5.0: the student takes no guidance", 2),
    (["--image={d}/photo.png", "--scheduler=euler"], "--scheduler applies to --teacher", 2),
    (["--prompt=x"], "--image is required", 2),
    (["--image={d}/photo.png", "--ckpt={d}/nowhere"], "--ckpt={d}/nowhere: no such checkpoint", 2),
    (["--image={d}/photo.png", "--mesh=(3,1,1,1)"], "--mesh=(3,1,1,1): mesh shape", 2),
    (["--image={d}/photo.png", "--config=nope"], "--config=nope: not a preset", 2),
    (["--image={d}/photo.png", "--ckpt={d}/ckpt", "--which=ema"], "--which/--step apply", 1),
  ],
)
def test_errors_name_the_flag(env, tmp_path, args, message, status):
  args = [a.format(d=env) for a in args]
  r = cli(env, *args, f"--out={tmp_path / 'x.mp4'}")
  assert r.returncode == status and message.format(d=env) in error_line(r), r.stderr[-3000:]
  assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("ckpt", [None, "work", "ckpt"])
def test_missing_pipeline_exits_without_traceback(env, tmp_path, ckpt):
  """No ``--pipeline``: only a toy run's workdir samples without one (test_sample_toy.py); a
  real train workdir or model checkpoint is told it needs one."""
  args = [f"--image={env / 'photo.png'}", "--prompt=a", f"--out={tmp_path / 'x.mp4'}"]
  r = sample_cli(*args, *([f"--ckpt={env / ckpt}"] if ckpt else []))
  assert r.returncode == 2 and error_line(r).startswith("error: --pipeline is required")
  if ckpt:
    assert f"--ckpt={env / ckpt} is not a toy run" in error_line(r)


def test_video_io(env, tmp_path):
  video = np.random.default_rng(0).integers(0, 255, (3, 17, 23, 3), np.uint8)
  codec = video_io.write_mp4(str(tmp_path / "odd.mp4"), video)
  assert codec == video_io.available_codec() and codec in video_io.CODECS
  assert video_io.read_mp4(str(tmp_path / "odd.mp4")).shape == (3, 18, 24, 3)  # padded even
  assert video_io.write_mp4(str(tmp_path / "m.mp4"), video / 255.0, codec="mpeg4") == "mpeg4"
  assert video_io.read_mp4(str(tmp_path / "m.mp4")).shape == (3, 18, 24, 3)
  assert video_io.strip(np.zeros((20, 4, 5, 3), np.uint8), 8).shape == (4, 40, 3)
  assert video_io.read_image(str(env / "tall.jpg")).shape == (40, 30, 3)
  with pytest.raises(FileNotFoundError, match="no such file"):
    video_io.read_image(str(tmp_path / "nope.png"))
  with pytest.raises(ValueError, match="not a file"):
    video_io.read_image(str(tmp_path))
