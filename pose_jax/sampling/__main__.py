"""Sample image-to-video clips with the one-step student (or the teacher) and write mp4s.

  python -m pose_jax.sampling --ckpt=WORKDIR --image=photo.jpg --prompt="a photo of a cup of
      coffee, the camera pans left"                                     # a toy run: nothing else
  python -m pose_jax.sampling --pipeline=Wan2.1-I2V-14B-480P-Diffusers --ckpt=workdir/run
      --image=photo.jpg --prompt="a cat surfing" [--out=sample.mp4] [--strip=sample.png]
      [--steps=1] [--seed=0] [--frames=81] [--size=480x832 | --max_area=399360]
      [--teacher [--steps=50 --cfg=5.0 --scheduler=unipc|euler --shift=3.0]]
      [--negative_prompt=...] [--prompts_file=FILE] [--which=student|ema] [--step=N]
      [--mesh=(1,-1,1,1)] [--batch_size=1] [--dtype=float32|bfloat16]

Outputs: ``--out`` (default ``sample.mp4`` in the current directory) and a PNG strip of its
frames, by default beside it (``sample.png``; ``--strip=`` writes none); one line per video says
where they went. ``--ckpt``, ``--image``, ``--prompts_file``, ``--out`` and ``--strip`` may be
``gs://`` paths (etils epath); ``--pipeline`` must be local (diffusers reads local folders).

A toy run (``python -m pose_jax.main --config=configs/toy_i2v.py --workdir=W``): ``--ckpt=W``
alone. Its checkpoints hold its config (``meta["config"]``), and from it the sampler rebuilds
what the run's data was conditioned with (:mod:`pose_jax.sampling.toy`): the toy codec of
``data``, the tiny encoders of ``seed`` and the caption-word tokenizer. It samples as the run's
own evaluation does: the image scaled (Lanczos) to cover the toy's ``data.size`` square and
centre-cropped, ``data.frames`` frames, the student in one step; ``--teacher``: Euler with the
run's ``eval.teacher_steps``, ``pose.cfg_real`` and ``pose.flow_shift``; ``eval.fps`` (each flag
still overrides; ``--size=HxW`` too, ``--max_area`` does not apply). The noise is this CLI's
per-sample draw from ``--seed`` (below), not the evaluation's draw for its whole batch. Words
outside the toy vocabulary (the words of its captions) read as ``<unk>``, with a warning line
naming them. ``--pipeline`` with a toy run is an error, as is no ``--pipeline`` with any other
checkpoint.

``--pipeline``: a diffusers ``WanImageToVideoPipeline`` folder (VAE, CLIP, UMT5, tokenizer and,
without ``--ckpt``, the DiT). ``--ckpt``: a training workdir (its latest step, or ``--step``;
``--which`` student or EMA weights), one step directory, or a model checkpoint from
``python -m pose_jax.convert import``; omitted: the pipeline's own transformer (the teacher).
A train step without a ``wan_config`` takes its architecture from ``--config`` (preset name or
config.json), else from the pipeline's ``transformer/config.json``.

Size: ``--size=HxW`` (multiples of 16) uses the image as it is (resized for the VAE like the
diffusers pipeline); otherwise ``--max_area`` picks HxW with the image's aspect ratio and
resizes the image first, as the Wan I2V example does. ``--frames`` must be 1 + 4k.

Samplers: default the student (``--steps`` 1; k > 1 re-noises in between; no CFG). ``--teacher``:
UniPC (default, as the Wan2.1 diffusers releases configure it) or flow-matching Euler with
``--shift`` (default 50 steps, ``--cfg=5.0`` with ``--negative_prompt``, default empty as in
diffusers).

``--prompts_file``: one sample per line, ``image_path<TAB>prompt`` (image paths relative to the
file; blank lines and lines starting with ``#`` are skipped). Outputs are numbered:
``--out=v.mp4`` -> ``v_000.mp4, v_001.mp4, ...`` (and the same for ``--strip``). Samples of the
same size are batched ``--batch_size`` at a time; sample i's noise is drawn from (seed, i), so it
does not depend on the batching. ``--mesh``: DiT parameters sharded over a
(data, fsdp, context, tensor) mesh, the batch split over data x fsdp.

Videos are written with H.264 (libx264) when PyAV has it, else MPEG-4 Part 2, at ``--fps``.
Errors print one line ``error: ...`` (no traceback). Bad flags, images and sizes exit with status
2 and name the flag; checkpoints that cannot be loaded exit with status 1.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from absl import app, flags
from etils import epath

from pose_jax import sharding as shd
from pose_jax.conditioning import ConditioningStack
from pose_jax.convert.configs import load_config
from pose_jax.convert.errors import CheckpointError
from pose_jax.paths import GCSFUSE, is_remote
from pose_jax.sampling import toy
from pose_jax.sampling.loading import load_dit, pipeline_mod_value
from pose_jax.sampling.pipeline import I2VPipeline, fit_image
from pose_jax.sampling.video_io import read_image, to_uint8, write_mp4, write_strip_png

FLAGS = flags.FLAGS
flags.DEFINE_string("pipeline", None, "Diffusers WanImageToVideoPipeline folder.")
_CKPT_HELP = "Train workdir, step dir or model checkpoint (default: the pipeline's own DiT)."
flags.DEFINE_string("ckpt", None, _CKPT_HELP)
flags.DEFINE_enum("which", "student", ["student", "ema"], "Workdir weights.")
flags.DEFINE_string("step", "latest", "Workdir step: N or latest.")
_CONFIG_HELP = (
  "Architecture of a train step without wan_config: preset name or diffusers config.json "
  "(default: the pipeline's transformer/config.json)."
)
flags.DEFINE_string("config", None, _CONFIG_HELP)
flags.DEFINE_string("image", None, "Input image (first frame).")
flags.DEFINE_string("prompt", None, "Text prompt.")
flags.DEFINE_string("prompts_file", None, "Lines 'image_path<TAB>prompt' (batch).")
flags.DEFINE_string("out", "sample.mp4", "Output .mp4 (numbered with --prompts_file).")
flags.DEFINE_string("strip", None, "PNG strip of frames side by side (default: --out as .png).")
flags.DEFINE_integer("strip_frames", 8, "Frames in the strip.")
flags.DEFINE_integer("steps", None, "Sampling steps (default: 1 student, 50 teacher).")
flags.DEFINE_integer("seed", 0, "Noise seed.")
flags.DEFINE_integer("frames", 81, "Video frames (1 + 4k).")
flags.DEFINE_string("size", None, "HxW, e.g. 480x832 (multiples of 16).")
flags.DEFINE_integer("max_area", 480 * 832, "Pixel area when --size is not given.")
flags.DEFINE_bool("teacher", False, "Sample with the teacher's multi-step solver.")
flags.DEFINE_enum(
  "scheduler",
  "unipc",
  ["unipc", "euler"],
  "Teacher solver (UniPC: what the Wan2.1 diffusers releases ship).",
)
flags.DEFINE_float(
  "shift", 3.0, "Time shift of the teacher and of a k-step student (3 at 480p, 5 at 720p)."
)
flags.DEFINE_float("cfg", None, "Teacher guidance scale (default 5.0; student: 1).")
flags.DEFINE_string("negative_prompt", None, "Teacher CFG negative prompt (default '').")
flags.DEFINE_string("mesh", None, "Mesh shape (data, fsdp, context, tensor), e.g. (1,-1,1,1).")
flags.DEFINE_integer("batch_size", 1, "Samples per DiT call (same size only).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("fps", 16, "Frame rate of the mp4.")


class FlagError(ValueError):
  """A bad flag value; the message names the flag."""


# --- flag checks (before any model is loaded) ----------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
  parts = text.lower().replace(" ", "").split("x")
  if len(parts) != 2 or not all(p.isdigit() for p in parts):
    raise FlagError(f"--size={text}: expected HxW, e.g. 480x832")
  return int(parts[0]), int(parts[1])


def parse_mesh(text: str) -> tuple[int, ...]:
  try:
    return shd.parse_mesh_shape(text)
  except ValueError as e:
    raise FlagError(f"--mesh={e}") from None


def read_prompts_file(path: str) -> list[tuple[str, str]]:
  """``[(image_path, prompt)]`` from ``image_path<TAB>prompt`` lines (the file and its images
  local or ``gs://``; image paths relative to the file's folder)."""
  p = epath.Path(path)
  if not p.is_file():
    raise FlagError(f"--prompts_file={path}: no such file")
  base = p.parent if is_remote(path) else epath.Path(os.path.abspath(path)).parent
  items = []
  for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    if "\t" not in line:
      raise FlagError(f"--prompts_file={path}: line {n} is not 'image_path<TAB>prompt'")
    image, prompt = line.split("\t", 1)
    image = image.strip()
    image = image if is_remote(image) else os.fspath(base / os.path.expanduser(image))
    items.append((image, prompt.strip()))
  if not items:
    raise FlagError(f"--prompts_file={path}: no samples in it")
  return items


def numbered(path: str, i: int, many: bool) -> str:
  if not many:
    return path
  stem, ext = os.path.splitext(path)
  return f"{stem}_{i:03d}{ext}"


def _run_meta(f) -> dict | None:
  """The toy run's meta (``toy.run_meta``) when ``--ckpt`` is a toy run's workdir or step: its
  latest step's (a resume may not change the data or the seed), so that a bad ``--step`` is
  named by the loader, not taken for a run that is not a toy's."""
  if f.step != "latest" and not f.step.isdigit():
    raise FlagError(f"--step={f.step}: expected an integer or latest")
  meta = toy.run_meta(f.ckpt) if f.ckpt else None
  return meta if toy.is_toy(meta) else None


def _pipeline_settings(f) -> dict:
  """Sampler and video settings of a ``--pipeline`` run: the flags, defaults filled in."""
  if not f.pipeline:
    not_toy = f"; --ckpt={f.ckpt} is not a toy run" if f.ckpt else ""
    raise FlagError(f"--pipeline is required (a diffusers WanImageToVideoPipeline folder){not_toy}")
  if is_remote(f.pipeline):
    why = "diffusers folders are read from local disk (from_pretrained, safetensors)"
    raise FlagError(f"--pipeline={f.pipeline}: {why}; copy it locally or {GCSFUSE}")
  if not os.path.isdir(f.pipeline):
    raise FlagError(f"--pipeline={f.pipeline}: no such directory")
  return dict(
    frames=f.frames,
    size=None,
    mod=pipeline_mod_value(f.pipeline),
    steps=f.steps if f.steps is not None else (50 if f.teacher else 1),
    guidance_scale=f.cfg if f.cfg is not None else (5.0 if f.teacher else 1.0),
    scheduler=f.scheduler if f.teacher else "euler",
    shift=f.shift,
    fps=f.fps,
  )


def _toy_settings(f, meta: dict) -> dict:
  """The same settings for a toy run: its own evaluation's (``toy.defaults``) where no flag is
  given."""
  if f.pipeline:
    raise FlagError(
      f"--pipeline: --ckpt={f.ckpt} is a toy run, sampled with its own toy codec and encoders "
      "(rebuilt from its config); drop --pipeline"
    )
  if f["max_area"].present:
    raise FlagError("--max_area: a toy run samples at its data.size (or --size=HxW)")
  d = toy.defaults(meta)
  pick = lambda name, default: getattr(f, name) if f[name].present else default
  return dict(
    frames=pick("frames", d["frames"]),
    size=d["size"],
    mod=d["mod"],
    steps=pick("steps", d["teacher_steps"] if f.teacher else 1),
    guidance_scale=pick("cfg", d["cfg"] if f.teacher else 1.0),
    scheduler=pick("scheduler", "euler"),
    shift=pick("shift", d["shift"]),
    fps=pick("fps", d["fps"]),
  )


def check_flags(f) -> dict:
  """Validated settings; raises FlagError naming the flag."""
  if f.ckpt and not is_remote(f.ckpt) and not os.path.exists(f.ckpt):
    raise FlagError(f"--ckpt={f.ckpt}: no such checkpoint or workdir")
  meta = _run_meta(f)
  t = _pipeline_settings(f) if meta is None else _toy_settings(f, meta)
  if not f.out.lower().endswith(".mp4"):
    raise FlagError(f"--out={f.out}: must end in .mp4")
  strip = os.path.splitext(f.out)[0] + ".png" if f.strip is None else f.strip
  if strip and not strip.lower().endswith(".png"):
    raise FlagError(f"--strip={strip}: must end in .png")
  if f.prompts_file:
    if f.image is not None or f.prompt is not None:
      raise FlagError("--prompts_file replaces --image/--prompt; give one or the other")
    items = read_prompts_file(f.prompts_file)
  else:
    missing = [n for n in ("image", "prompt") if getattr(f, n) is None]
    if missing:
      raise FlagError(f"--{missing[0]} is required (or --prompts_file)")
    items = [(f.image, f.prompt)]
  images = []
  for path, _ in items:
    try:
      images.append(read_image(path))
    except (FileNotFoundError, ValueError) as e:
      raise FlagError(f"--{'prompts_file' if f.prompts_file else 'image'}: {e}") from e
  steps, guidance_scale, frames, mod = (t[k] for k in ("steps", "guidance_scale", "frames", "mod"))
  if steps < 1:
    raise FlagError(f"--steps={steps}: must be at least 1")
  if not f.teacher:
    if guidance_scale != 1.0:
      raise FlagError(f"--cfg={guidance_scale}: the student takes no guidance (use --teacher)")
    if f["scheduler"].present:
      raise FlagError("--scheduler applies to --teacher sampling")
  if frames < 1 or (frames - 1) % 4:
    raise FlagError(f"--frames={frames}: must be 1 + 4k (1, 5, 9, ..., 81)")
  if f.size:
    t["size"] = parse_size(f.size)
    bad = [f"{n}={v}" for n, v in zip(("height", "width"), t["size"]) if v < mod or v % mod]
    if bad:
      raise FlagError(f"--size={f.size}: {', '.join(bad)} must be positive multiples of {mod}")
  elif f.max_area < mod * mod:
    raise FlagError(f"--max_area={f.max_area}: must be at least {mod}x{mod}")
  if f.batch_size < 1:
    raise FlagError(f"--batch_size={f.batch_size}: must be at least 1")
  try:
    config = load_config(f.config)
  except CheckpointError as e:  # names --config
    raise FlagError(str(e)) from e
  return dict(
    **t,
    items=items,
    images=images,
    mode="teacher" if f.teacher else "student",
    strip=strip,
    step=None if f.step == "latest" else int(f.step),
    mesh=parse_mesh(f.mesh) if f.mesh else None,
    config=config,
    toy=meta,
  )


# --- run --------------------------------------------------------------------------------------
def run(f, s: dict) -> None:
  """Loads the models, samples every item, writes the files and prints a line for each."""
  say = lambda line: print(line, flush=True)
  mesh = None
  if s["mesh"] is not None:
    try:
      mesh = shd.make_mesh(s["mesh"])
    except ValueError as e:
      raise FlagError(f"--mesh={f.mesh}: {e}") from e
  t0 = time.perf_counter()
  if s["toy"] is not None:
    stack = toy.ToyStack.from_meta(s["toy"])
    source = f"the toy codec and encoders of its config (seed {s['toy']['config']['seed']})"
    for line in stack.prompt_warnings([prompt for _, prompt in s["items"]]):
      print(line, file=sys.stderr, flush=True)
  else:
    stack = ConditioningStack.from_pretrained(f.pipeline, dtype=f.dtype)
    source = f.pipeline
  model, what = load_dit(
    f.ckpt,
    f.pipeline,
    which=f.which if f.ckpt else None,
    step=s["step"] if f.ckpt else None,
    config=s["config"],
    mesh=mesh,
    dtype=f.dtype,
  )
  pipe = I2VPipeline.from_model(stack, model, mesh)
  say(f"loaded {what} and {source} in {time.perf_counter() - t0:.1f}s")
  if not f.ckpt and not f.teacher:
    say("note: no --ckpt: the pipeline's own (teacher) DiT with the student's one-step sampler")

  # Per item: the image as the DiT sees it and the video size.
  prepared = []
  for image in s["images"]:
    if s["size"] is not None:
      prepared.append((image, *s["size"]))
    else:
      prepared.append(fit_image(image, f.max_area, s["mod"]))
  groups: dict[tuple[int, int], list[int]] = {}
  for i, (_, h, w) in enumerate(prepared):
    groups.setdefault((h, w), []).append(i)
  many = len(s["items"]) > 1
  sampler = s["mode"] + (f" {s['scheduler']}" if s["mode"] == "teacher" else "")
  for (h, w), indices in groups.items():
    for start in range(0, len(indices), f.batch_size):
      idx = indices[start : start + f.batch_size]
      shape = pipe.latent_shape(len(idx), s["frames"], h, w)
      noise = pipe.make_noise(shape, f.seed, idx)
      t1 = time.perf_counter()
      videos = pipe(
        [prepared[i][0] for i in idx],
        [s["items"][i][1] for i in idx],
        num_frames=s["frames"],
        height=h,
        width=w,
        steps=s["steps"],
        mode=s["mode"],
        scheduler=s["scheduler"],
        shift=s["shift"],
        guidance_scale=s["guidance_scale"],
        negative_prompt=f.negative_prompt,
        seed=f.seed,
        noise=noise,
      )
      secs = time.perf_counter() - t1
      for i, video in zip(idx, videos):
        frames = to_uint8(video)
        out = numbered(f.out, i, many)
        codec = write_mp4(out, frames, fps=s["fps"])
        extra = ""
        if s["strip"]:
          write_strip_png(numbered(s["strip"], i, many), frames, f.strip_frames)
          extra = f", strip {numbered(s['strip'], i, many)}"
        say(
          f"wrote {out}: {s['frames']} frames {h}x{w} ({codec}, {s['fps']} fps{extra}); "
          f"{sampler} {s['steps']} step(s), batch of {len(idx)} in {secs:.1f}s"
        )


def _exit(error, status: int):
  print(f"error: {error}", file=sys.stderr)
  sys.exit(status)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing; a bad value or an unknown flag exits 2, as the checks below do."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _exit(e, 2)


def main(argv: Sequence[str]) -> None:
  """Exits 0 when every video is written, 2 on a bad flag, 1 on a checkpoint that fails."""
  if len(argv) > 1:
    _exit(f"unexpected arguments {argv[1:]}", 2)
  try:
    run(FLAGS, check_flags(FLAGS))
  except FlagError as e:
    _exit(e, 2)
  except (
    CheckpointError,
    FileExistsError,
    FileNotFoundError,
    ValueError,
    NotImplementedError,
  ) as e:
    _exit(e, 1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
