"""Training clips made by the teacher: ``prepare --pairs=pairs.jsonl`` (the paper trains on
teacher samples as well as real videos).

For each line ``{"image": path, "prompt": text}`` of the pairs file, the teacher samples a clip
from that image and prompt with the sampler of :class:`pose_jax.sampling.I2VPipeline` (multi-
step, classifier-free guidance against ``negative_prompt``, the DiT sharded over ``mesh`` and the
batch over its data x fsdp axes, exactly as ``pose_jax.sampling`` does), and the clip's latents
are written with the same conditioning a real clip gets (``cond``, CLIP image tokens, UMT5 text
tokens and mask) into the same shards as :func:`pose_jax.data.prepare.prepare` writes, with
``key = "teacher/<line>"``. The latents go to the shards as sampled (no VAE decode and
re-encode). The noise of line ``i`` is :meth:`I2VPipeline.make_noise` row ``i`` of ``seed``, so
a clip does not depend on the batching.

Resumable: the pairs are cut into shards of ``shard_size`` lines; each shard is written under a
temporary name and renamed, then marked done in ``<out>/progress/``; a rerun of the same command
skips the shards marked done (same pairs file, sampler and seed: checked against the first
run's ``progress/settings.json``) and ``meta.json`` is written when all are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app
from PIL import Image

from pose_jax.data import bucket
from pose_jax.data.records import META, NEG_TEXT, SUFFIX, ShardWriter
from pose_jax.paths import GCSFUSE, local_only

PROGRESS = "progress"


def read_pairs(path: str) -> list[dict[str, str]]:
  """The pairs file's lines as ``{"image", "prompt"}``; ValueError naming ``file:line``."""
  pairs = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
      if not isinstance(rec, dict) or not {"image", "prompt"} <= set(rec):
        raise ValueError(f'{path}:{n}: expected {{"image": path, "prompt": text}}: got {line!r}')
      image = (
        rec["image"]
        if os.path.isabs(rec["image"])
        else os.path.join(os.path.dirname(os.path.abspath(path)), rec["image"])
      )
      if not os.path.isfile(image):
        raise ValueError(f"{path}:{n}: no image file {image}")
      pairs.append({"image": image, "prompt": str(rec["prompt"])})
  if not pairs:
    raise ValueError(f"{path}: no (image, prompt) pairs")
  return pairs


def _shard_name(k: int) -> str:
  return f"shard-{k:05d}{SUFFIX}"


def _check_settings(out_dir: str, settings: dict) -> None:
  path = os.path.join(out_dir, PROGRESS, "settings.json")
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if changed:
      diffs = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
      raise ValueError(
        f"{out_dir} holds teacher clips made with other settings ({diffs}); "
        "use another --out or remove it"
      )
  else:
    with open(path, "w") as f:
      json.dump(settings, f, indent=2)


def make_teacher_clips(
  pipe,
  pairs: Sequence[dict[str, str]],
  out_dir: str,
  *,
  frames: int,
  height: int,
  width: int,
  steps: int = 50,
  guidance_scale: float = 5.0,
  shift: float = 3.0,
  scheduler: str = "unipc",
  negative_prompt: str = "",
  seed: int = 0,
  shard_size: int = 64,
  batch_size: int = 1,
  float_dtype: str = "float32",
  log=print,
) -> dict[str, Any]:
  """Samples every pair with the teacher ``pipe`` and writes the shards + ``meta.json`` into
  ``out_dir`` (module doc); returns the meta."""
  from pose_jax.conditioning import MAX_SEQUENCE_LENGTH
  from pose_jax.models.encoders.tokenizer import tokenize
  from pose_jax.sampling.pipeline import check_sampler

  check_sampler("teacher", scheduler, steps, guidance_scale)
  if shard_size < 1 or batch_size < 1:
    raise ValueError(f"shard_size={shard_size}, batch_size={batch_size}: both must be >= 1")
  os.makedirs(os.path.join(out_dir, PROGRESS), exist_ok=True)
  sampler = dict(steps=steps, shift=shift, scheduler=scheduler, guidance_scale=guidance_scale)
  settings = dict(
    pairs=[[p["image"], p["prompt"]] for p in pairs],
    frames=frames,
    height=height,
    width=width,
    negative_prompt=negative_prompt,
    seed=seed,
    shard_size=shard_size,
    float_dtype=float_dtype,
    **sampler,
  )
  _check_settings(out_dir, settings)
  chunks = [range(i, min(i + shard_size, len(pairs))) for i in range(0, len(pairs), shard_size)]
  made = 0
  for k, chunk in enumerate(chunks):
    done = os.path.join(out_dir, PROGRESS, f"{k:05d}.json")
    if os.path.exists(done):
      continue
    part = os.path.join(out_dir, f".part-{k:05d}")
    writer = ShardWriter(part, len(chunk), float_dtype=float_dtype)
    for start in range(chunk.start, chunk.stop, batch_size):
      rows = list(range(start, min(start + batch_size, chunk.stop)))
      # As the sampler with height/width given: the VAE input is resized, CLIP sees the image.
      images = [np.asarray(Image.open(pairs[i]["image"]).convert("RGB")) for i in rows]
      prompts = [pairs[i]["prompt"] for i in rows]
      size = dict(num_frames=frames, height=height, width=width)
      c = pipe.encode(images, prompts, **size, negative_prompt=negative_prompt)
      noise = pipe.make_noise(pipe.latent_shape(len(rows), frames, height, width), seed, rows)
      latents = np.asarray(pipe.sample_latents(c, noise, mode="teacher", **sampler))
      _, masks = tokenize(pipe.stack.tokenizer, prompts, MAX_SEQUENCE_LENGTH)
      for j, i in enumerate(rows):
        writer.write(
          {
            "latents": latents[j],
            "cond": np.asarray(c.cond[j]),
            "image": np.asarray(c.image_tokens[j]),
            "text": np.asarray(c.text_tokens[j]),
            "text_mask": np.asarray(masks[j]),
            "caption": prompts[j],
            "key": f"teacher/{i}",
          }
        )
    shard_meta = writer.close()
    os.replace(os.path.join(part, shard_meta["shards"][0]), os.path.join(out_dir, _shard_name(k)))
    for name in os.listdir(part):
      os.remove(os.path.join(part, name))
    os.rmdir(part)
    with open(done, "w") as f:
      (sha,) = shard_meta["sha256"].values()  # the shard's bytes, hashed as it was closed
      json.dump({"examples": len(chunk), "shapes": shard_meta["shapes"], "sha256": sha}, f)
    made += 1
    log(f"[shard {k + 1}/{len(chunks)}] {len(chunk)} teacher clip(s) written")
  log(f"{made} shard(s) sampled, {len(chunks) - made} done before")
  return _finish(pipe, out_dir, len(chunks), negative_prompt, settings)


def _finish(pipe, out_dir: str, num_shards: int, negative_prompt: str, settings: dict) -> dict:
  """``meta.json`` (and ``neg_text.npy``) once every shard is marked done."""
  marks = []
  for k in range(num_shards):
    with open(os.path.join(out_dir, PROGRESS, f"{k:05d}.json")) as f:
      marks.append(json.load(f))
  names = [_shard_name(k) for k in range(num_shards)]
  np.save(
    os.path.join(out_dir, NEG_TEXT),
    np.asarray(pipe.stack.encode_text([negative_prompt])[0], np.float32),
  )
  meta = {
    "num_examples": sum(m["examples"] for m in marks),
    "shards": names,
    "sha256": {n: m["sha256"] for n, m in zip(names, marks)},
    "shapes": marks[0]["shapes"],
    "neg_text": NEG_TEXT,
    "stored_float_dtype": settings["float_dtype"],
    "codec": "wan_vae",
    "source": "teacher",
    **{k: v for k, v in settings.items() if k != "pairs"},
  }
  with open(os.path.join(out_dir, META), "w") as f:
    json.dump(meta, f, indent=2)
  return meta


def cli_main(f) -> None:
  """``prepare --pairs=...`` with the parsed flags ``f`` (``pose_jax.data.prepare``'s)."""
  from pose_jax import sharding as shd
  from pose_jax.conditioning import check_video_size
  from pose_jax.sampling.pipeline import I2VPipeline

  if f.videos or f.captions:
    raise app.UsageError("--pairs makes teacher clips: no --videos/--captions with it")
  try:
    local_only(f.pairs, "--pairs", "prepare reads local files only", GCSFUSE)
    pairs = read_pairs(f.pairs)
    check_video_size(f.frames, f.height, f.width)
    mesh = shd.make_mesh(shd.parse_mesh_shape(f.mesh)) if f.mesh else None
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  pipe = I2VPipeline.from_pretrained(f.pipeline, f.teacher, mesh=mesh, dtype=f.dtype)
  out = bucket.staging_dir(f.out)
  meta = make_teacher_clips(
    pipe,
    pairs,
    out,
    frames=f.frames,
    height=f.height,
    width=f.width,
    steps=f.steps,
    guidance_scale=f.guidance_scale,
    shift=f.shift,
    scheduler=f.scheduler,
    negative_prompt=f.negative_prompt,
    seed=f.seed,
    shard_size=f.shard_size,
    batch_size=f.batch_size,
    float_dtype=f.float_dtype,
  )
  print(f"written {meta['num_examples']} teacher clip(s) in {len(meta['shards'])} shard(s)")
  bucket.publish(out, f.out)
