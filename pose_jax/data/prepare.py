"""Encode real clips into training shards with the Wan I2V conditioning stack.

  python -m pose_jax.data.prepare --videos='clips/*.mp4,more/*.webm' --captions=captions.jsonl \
      --pipeline=Wan2.1-I2V-14B-480P-Diffusers --out=data/train [--frames=81 --height=480 ...]
  python -m pose_jax.data.prepare --pairs=pairs.jsonl --pipeline=DIR [--teacher=CKPT] \
      --out=data/teacher [--steps=50 --guidance_scale=5 --scheduler=unipc --mesh=(1,-1,1,1)]

``--pairs``: teacher-made clips instead (:mod:`pose_jax.data.teacher_clips`, resumable).

Captions: JSON lines ``{"video": "name.mp4", "caption": "..."}``, matched on the video file's
base name. Each clip (PyAV: frames resampled to ``--fps``, default 16, the rate of Wan2.1's
motion, so that real clips move per frame as the teacher's and the student's samples do;
``--fps=0``: the first ``frames`` native frames) is resized to cover ``height x width`` and
centre-cropped, then:

  latents  = normalise(VAE posterior mean of the clip)      (pipeline's latent normalisation)
  cond, image, text = ConditioningStack.encode(first frame, caption)
  text_mask = the tokenizer's attention mask (512 tokens)

and written as one example (:mod:`pose_jax.data.example`) to ArrayRecord shards in ``--out``,
with ``meta.json`` and ``neg_text.npy`` (the ``--negative_prompt``, empty by default as in
diffusers). ``--out=gs://...`` stages the shards in the local data cache
(:func:`pose_jax.data.bucket.cache_dir_for`) and uploads them, ``meta.json`` last. Videos that
cannot be read, are too short, have no caption or fail to encode are skipped, counted and
listed: printed at the end and in ``<out>/summary.json``; the job goes on, but exits nonzero
if it wrote no example at all. The flags, the captions file and the globs are checked before
the (slow) pipeline is loaded: a bad one ends the job with one ``error:`` line.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from pose_jax.data import bucket
from pose_jax.data.records import ShardWriter
from pose_jax.paths import GCSFUSE, local_only

SKIP_REASONS = ("unreadable", "too_short", "no_caption", "encode_failed")
MOD_VALUE = 16  # frame sides: multiples of the VAE stride x the DiT patch (checked again on load)
CAPTION_KEYS = ("video", "caption")  # of every captions line, both strings
LISTED = 10  # captions without a video named in the printed summary (all in summary.json)


class ClipError(Exception):
  """A clip that is skipped; ``reason`` is one of :data:`SKIP_REASONS`."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail


# --- inputs -----------------------------------------------------------------------------------
def read_captions(path: str) -> dict[str, str]:
  """JSON lines ``{"video": ..., "caption": ...}`` -> ``{video base name: caption}``."""
  out = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in CAPTION_KEYS):
          raise TypeError(f"got {line.strip()[:80]}")
        out[os.path.basename(row["video"])] = row["caption"]
      except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path}:{n}: expected {{'video': ..., 'caption': ...}}: {e}") from e
  return out


def check_inputs(
  patterns: Sequence[str], captions: str, frames: int, height: int, width: int
) -> tuple[list[str], dict[str, str]]:
  """``(videos, captions)`` for the CLI's flags, or ValueError naming the flag (or the captions
  file's line): run before the pipeline is loaded, so that a typo costs seconds, not minutes."""
  if frames < 1 or (frames - 1) % 4:
    raise ValueError(f"--frames={frames} must be 1 + 4k (1, 5, 9, ..., 81)")
  for name, v in (("height", height), ("width", width)):
    if v < MOD_VALUE or v % MOD_VALUE:
      raise ValueError(f"--{name}={v} must be a positive multiple of {MOD_VALUE}")
  if not os.path.isfile(captions):
    raise ValueError(f"--captions={captions}: no such file")
  rows = read_captions(captions)
  videos = find_videos(patterns)
  if not videos:
    raise ValueError(f"--videos={','.join(patterns)}: matches no file")
  return videos, rows


def find_videos(patterns: Sequence[str]) -> list[str]:
  """Sorted, de-duplicated matches of the glob patterns."""
  return sorted({p for pattern in patterns for p in glob.glob(pattern)})


def _cover_size(w0: int, h0: int, width: int, height: int) -> tuple[int, int]:
  scale = max(width / w0, height / h0)
  return max(width, round(w0 * scale)), max(height, round(h0 * scale))


WAN_FPS = 16.0  # the frame rate of Wan2.1's videos


def native_fps(path: str) -> float | None:
  """The frame rate a video's stream declares (None if it declares none)."""
  import av

  with av.open(path) as container:
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def read_clip(path: str, frames: int, height: int, width: int, fps: float = 0.0) -> np.ndarray:
  """uint8 ``[frames, height, width, 3]``: resized to cover (Lanczos), centre-cropped.

  ``fps > 0`` picks frame ``round(i * native_fps / fps)`` for i = 0, 1, ...; otherwise the
  first ``frames`` frames. Raises :class:`ClipError` (unreadable / too_short).
  """
  import av

  if os.path.isfile(path) and os.path.getsize(path) == 0:
    raise ClipError("unreadable", "empty file (0 bytes)")
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise ClipError("unreadable", "no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      wanted = list(range(frames))
      if fps > 0:
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
          raise ClipError("unreadable", "unknown frame rate (needed for --fps)")
        wanted = [round(i * float(rate) / fps) for i in range(frames)]
      out, index = [], 0
      for frame in container.decode(stream):
        while len(out) < frames and wanted[len(out)] == index:
          w, h = _cover_size(frame.width, frame.height, width, height)
          rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="LANCZOS")
          arr = rgb.to_ndarray()
          top, left = (h - height) // 2, (w - width) // 2
          out.append(arr[top : top + height, left : left + width])
        if len(out) == frames:
          break
        index += 1
  except ClipError:
    raise
  except Exception as e:  # PyAV / FFmpeg raise many kinds; all mean unreadable
    raise ClipError("unreadable", f"{type(e).__name__}: {e}") from e
  if len(out) < frames:
    raise ClipError("too_short", f"{len(out)} of {frames} frames (fps={fps or 'native'})")
  return np.stack(out)


# --- encoding ---------------------------------------------------------------------------------
@nnx.jit
def video_latents(vae, video: jax.Array) -> jax.Array:
  """Video ``[B, T, H, W, 3]`` in [-1, 1] -> normalised posterior mean ``[B, N, h, w, Z]``, as
  the pipeline's ``prepare_latents`` treats its condition video (``sample_mode="argmax"``)."""
  mean, _ = vae.encode(video)
  return vae.normalize_latents(mean)


def encode_clip(stack, clip: np.ndarray, caption: str, key: str) -> dict[str, Any]:
  """One example from a uint8 clip ``[T, H, W, 3]`` and its caption."""
  from pose_jax.conditioning import MAX_SEQUENCE_LENGTH
  from pose_jax.models.encoders.tokenizer import tokenize

  t, h, w, _ = clip.shape
  video = jnp.asarray(clip[None].astype(np.float32) / 127.5 - 1.0)
  c = stack.encode(clip[0], caption, num_frames=t, height=h, width=w)
  _, mask = tokenize(stack.tokenizer, [caption], MAX_SEQUENCE_LENGTH)
  return {
    "latents": np.asarray(video_latents(stack.vae, video)[0]),
    "cond": np.asarray(c.cond[0]),
    "image": np.asarray(c.image_tokens[0]),
    "text": np.asarray(c.text_tokens[0]),
    "text_mask": mask[0],
    "caption": caption,
    "key": key,
  }


def prepare(
  videos: Sequence[str],
  captions: Mapping[str, str],
  out_dir: str,
  stack: Any,
  *,
  frames: int = 81,
  height: int = 480,
  width: int = 832,
  fps: float = WAN_FPS,
  shard_size: int = 64,
  negative_prompt: str = "",
  compress: bool = True,
  float_dtype: str = "float32",
) -> dict[str, Any]:
  """Encodes ``videos`` into shards in ``out_dir``; returns (and writes) the summary.

  ``stack`` is a :class:`pose_jax.conditioning.ConditioningStack` or a pipeline folder. A bad
  size raises ValueError before anything is read; a bad clip is skipped, never raised.
  """
  from pose_jax.conditioning import ConditioningStack, check_video_size

  if not videos:
    raise ValueError("no videos to prepare")
  if isinstance(stack, str):
    stack = ConditioningStack.from_pretrained(stack)
  check_video_size(frames, height, width, stack.mod_value)
  writer = ShardWriter(out_dir, shard_size, compress=compress, float_dtype=float_dtype)
  skipped: dict[str, dict[str, str]] = {}
  for i, path in enumerate(videos):
    name = os.path.basename(path)
    try:
      if name not in captions:
        raise ClipError("no_caption", f"{name} is not in the captions file")
      clip = read_clip(path, frames, height, width, fps)
      try:
        example = encode_clip(stack, clip, captions[name], key=name)
      except Exception as e:  # one bad clip must not end the job
        raise ClipError("encode_failed", f"{type(e).__name__}: {e}") from e
      writer.write(example)
      rate = native_fps(path) if fps > 0 else None
      how = f"{rate:g} fps resampled to {fps:g} fps" if rate else "native frames"
      print(f"[{i + 1}/{len(videos)}] {name}: ok ({how})")
    except ClipError as e:
      skipped[path] = {"reason": e.reason, "detail": e.detail}
      print(f"[{i + 1}/{len(videos)}] {name}: skipped ({e})")
  neg_text = np.asarray(stack.encode_text([negative_prompt])[0])
  meta = writer.close(
    neg_text,
    codec="wan_vae",
    frames=frames,
    height=height,
    width=width,
    fps=fps,
    negative_prompt=negative_prompt,
    text_length=int(neg_text.shape[0]),
  )
  matched = {os.path.basename(p) for p in videos}
  summary = {
    "written": writer.count,
    "skipped": len(skipped),
    "counts": {r: sum(s["reason"] == r for s in skipped.values()) for r in SKIP_REASONS},
    "skipped_videos": skipped,
    "captions_without_video": sorted(set(captions) - matched),
    "shards": meta["shards"],
  }
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def format_summary(summary: Mapping[str, Any]) -> str:
  lines = [f"written {summary['written']} example(s) in {len(summary['shards'])} shard(s)"]
  lines.append(
    f"skipped {summary['skipped']}: " + ", ".join(f"{k}={v}" for k, v in summary["counts"].items())
  )
  lines += [f"  {p}: {s['reason']} ({s['detail']})" for p, s in summary["skipped_videos"].items()]
  unmatched = summary["captions_without_video"]
  if unmatched:
    more = f", ... and {len(unmatched) - LISTED} more" if len(unmatched) > LISTED else ""
    lines.append(
      f"captions without a video: {len(unmatched)}: {', '.join(unmatched[:LISTED])}{more}"
    )
  return "\n".join(lines)


# --- CLI --------------------------------------------------------------------------------------
def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The CLI's flags. Only ``python -m pose_jax.data.prepare`` defines them: absl flags are
  process-wide and this module is also a library (``--out``, ``--frames``, ``--dtype``, ... are
  other CLIs' flags too)."""
  d = dict(flag_values=flag_values)
  flags.DEFINE_list("videos", None, "Comma-separated glob(s) of video files (mp4, webm).", **d)
  flags.DEFINE_string(
    "pairs",
    None,
    'Teacher clips instead of videos: JSON lines {"image": path, "prompt": text}.',
    **d,
  )
  flags.DEFINE_string(
    "teacher", None, "--pairs: the teacher checkpoint (default: --pipeline's).", **d
  )
  flags.DEFINE_integer("steps", 50, "--pairs: teacher sampler steps.", **d)
  flags.DEFINE_float("guidance_scale", 5.0, "--pairs: classifier-free guidance scale.", **d)
  flags.DEFINE_float("shift", 3.0, "--pairs: the sampler's time shift.", **d)
  flags.DEFINE_enum("scheduler", "unipc", ["unipc", "euler"], "--pairs: teacher sampler.", **d)
  flags.DEFINE_integer("seed", 0, "--pairs: noise seed (clip i: row i of this seed).", **d)
  flags.DEFINE_integer("batch_size", 1, "--pairs: clips sampled at once.", **d)
  flags.DEFINE_string("mesh", None, "--pairs: mesh shape for the DiT, e.g. (1,-1,1,1).", **d)
  flags.DEFINE_string("captions", None, 'JSON lines {"video": name, "caption": text}.', **d)
  flags.DEFINE_string("out", None, "Output directory for shards, meta and summary.", **d)
  flags.DEFINE_string("pipeline", None, "Diffusers WanImageToVideoPipeline folder.", **d)
  flags.DEFINE_integer("frames", 81, "Frames per clip (1 + 4k).", **d)
  flags.DEFINE_integer("height", 480, "Clip height (multiple of 16).", **d)
  flags.DEFINE_integer("width", 832, "Clip width (multiple of 16).", **d)
  flags.DEFINE_float(
    "fps", WAN_FPS, "Resample clips to this frame rate (Wan2.1's 16; 0: native frames).", **d
  )
  flags.DEFINE_integer("shard_size", 64, "Examples per ArrayRecord shard.", **d)
  flags.DEFINE_string("negative_prompt", "", "Prompt encoded as neg_text.", **d)
  flags.DEFINE_string("dtype", "float32", "Encoder compute dtype (float32, bfloat16).", **d)
  flags.DEFINE_enum(
    "float_dtype", "float32", ["float32", "float16"], "Stored dtype of the float fields.", **d
  )
  flags.mark_flags_as_required(["out", "pipeline"], flag_values)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from pose_jax.conditioning import ConditioningStack

  f = flags.FLAGS
  if f.pairs:
    from pose_jax.data.teacher_clips import cli_main

    return cli_main(f)
  if not f.videos or not f.captions:
    raise app.UsageError("give --videos and --captions (real clips), or --pairs (teacher clips)")
  try:
    local = [("captions", f.captions), *(("videos", v) for v in f.videos)]
    for name, value in local:  # PyAV decodes local files
      local_only(value, f"--{name}", "prepare reads local files only", GCSFUSE)
    videos, captions = check_inputs(f.videos, f.captions, f.frames, f.height, f.width)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  print(f"{len(videos)} video(s) match {f.videos}")
  for pattern in f.videos:
    if not glob.glob(pattern):
      print(f"warning: --videos pattern {pattern} matches no file")
  stack = ConditioningStack.from_pretrained(f.pipeline, dtype=f.dtype)
  out = bucket.staging_dir(f.out)
  summary = prepare(
    videos,
    captions,
    out,
    stack,
    frames=f.frames,
    height=f.height,
    width=f.width,
    fps=f.fps,
    shard_size=f.shard_size,
    negative_prompt=f.negative_prompt,
    float_dtype=f.float_dtype,
  )
  print(format_summary(summary))
  if not summary["written"]:
    summary_path = os.path.join(out, "summary.json")
    raise SystemExit(f"error: 0 examples written, every video was skipped (see {summary_path})")
  bucket.publish(out, f.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
