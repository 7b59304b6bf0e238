"""Scoring and the table of ``bench/ablations.py``.

:func:`score` samples every held-out toy clip with one recipe and measures it; :func:`write`
gathers the per-seed results into the table (mean +- standard deviation over seeds, and the
min..max in the JSON), a PNG grid and an HTML page.

Columns: ``motion_accuracy`` (the camera move ``evaluators.camera_move`` names is the
caption's, photo clips), ``dynamic_degree`` (VBench's fraction of moving videos: static
collapse shows as 0), first-frame PSNR / SSIM to the condition image, ``flicker`` (VBench's
score, 1 = none), ``fvd`` (Fréchet distance to the real held-out clips in the features of the
small video network :func:`fvd_features` trains on the real training clips: the toy FVD),
``dit_ms`` (the sampler alone, latents in and out) and ``e2e_ms`` (caption + image encoders,
condition, sampler, decode) per clip at the eval batch, measured after a warm-up call, and the
training wall clock.
"""

from __future__ import annotations

import glob
import html
import json
import os
import time

import numpy as np

COLUMNS = (  # key, header, format
  ("nfe", "NFE", "{:.0f}"),
  ("motion_accuracy", "motion acc.", "{:.2f}"),
  ("dynamic_degree", "dynamic deg.", "{:.2f}"),
  ("first_frame_psnr", "1st-frame PSNR", "{:.1f}"),
  ("first_frame_ssim", "1st-frame SSIM", "{:.3f}"),
  ("flicker", "flicker", "{:.3f}"),
  ("fvd", "toy FVD", "{:.1f}"),
  ("footage_first_frame_psnr", "footage PSNR", "{:.1f}"),
  ("dit_ms", "DiT ms/clip", "{:.1f}"),
  ("e2e_ms", "e2e ms/clip", "{:.1f}"),
  ("train_wall_s", "train s", "{:.0f}"),
)
GRID_CLIPS = 6  # clips per recipe in the PNG grid and the HTML page


def grid_clips(n: int) -> np.ndarray:
  """The eval clips the grid and the page show: :data:`GRID_CLIPS` evenly spaced of ``n``
  (photos, moves and footage alike)."""
  return np.unique(np.linspace(0, n - 1, min(n, GRID_CLIPS)).round().astype(int))


def save_videos(folder: str, u8: np.ndarray, fps: int) -> None:
  """``samples.npy`` (every clip, uint8) and the grid clips' mp4s in ``folder``."""
  from pose_jax.sampling import video_io

  os.makedirs(folder, exist_ok=True)
  np.save(os.path.join(folder, "samples.npy"), u8)
  for i in grid_clips(len(u8)):
    video_io.write_mp4(os.path.join(folder, f"clip_{i}.mp4"), u8[i], fps=fps)


def _median_seconds(fn, repeats: int) -> float:
  """Median wall seconds of ``repeats`` calls of ``fn`` (compiled already)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def score(
  config,
  params,
  batch: dict,
  sampler: str,
  steps: int,
  seed: int,
  fvd,
  data_seed: int,
  videos_dir: str | None = None,
  timed: bool = True,
) -> dict:
  """One recipe's samples of ``batch`` (every held-out clip) from the noise of ``seed``,
  scored (module docstring). ``sampler``: ``student`` (``steps`` steps) or ``teacher`` (Euler,
  ``steps`` steps, CFG ``config.pose.cfg_real``); ``fvd``: videos in [0, 1] -> distance to the
  real held-out clips; ``data_seed``: the seed the toy encoders were made with.
  ``videos_dir``: also write each clip's mp4 and ``samples.npy`` (uint8) there. ``timed``:
  measure ``dit_ms`` and ``e2e_ms`` (else None: the latency of a recipe does not depend on its
  seed, so ``ablations.py`` times one seed per row)."""
  import jax
  import jax.numpy as jnp

  from pose_jax import config as config_lib
  from pose_jax import evaluators
  from pose_jax.data import toy
  from pose_jax.data.toy_codec import ToyCodec
  from pose_jax.pose import models as pose_models
  from pose_jax.pose.config import PoseConfig
  from pose_jax.sampling import samplers, video_io
  from pose_jax.training import evals

  knobs = PoseConfig.from_config(config.pose)
  dit = pose_models.build(config_lib.wan_config(config.model), knobs)[0].dit
  codec = ToyCodec.from_config(config.data)
  noise = jax.random.normal(jax.random.key(seed), batch["latents"].shape, jnp.float32)
  neg = jnp.broadcast_to(batch["neg_text"][:1], batch["text"].shape)
  if sampler == "teacher":
    run = lambda p, noise, cond, text, image: samplers.teacher_euler(
      dit,
      p,
      noise,
      cond,
      text,
      image,
      steps=steps,
      shift=knobs.flow_shift,
      guidance_scale=knobs.cfg_real,
      neg_text=neg,
    )
    nfe = 2 * steps
  else:
    key = jax.random.key(seed + 1)
    run = lambda p, noise, cond, text, image: samplers.student(
      dit, p, noise, cond, text, image, steps=steps, shift=knobs.flow_shift, key=key
    )
    nfe = steps
  run = jax.jit(run)  # the noise and batch as arguments, not constants in the program
  args = (noise, *(jnp.asarray(batch[k]) for k in ("cond", "text", "image")))
  x = np.asarray(run(params, *args))  # (the compile)
  # A many-step sampler is timed once (its run is long; 3 repeats of the 50-step CFG teacher
  # on 36 clips were most of the bench's time), a one-step one by the median of 3.
  repeats = 1 if nfe >= 10 else 3
  per_clip_ms = lambda fn: 1e3 * _median_seconds(fn, repeats) / len(x) if timed else None
  dit_ms = per_clip_ms(lambda: run(params, *args).block_until_ready())

  enc = toy.ToyEncoders.create(data_seed)
  real = np.asarray(codec.decode(np.asarray(batch["latents"])))
  first_u8 = np.round((real[:, 0] + 1) * 127.5).astype(np.uint8)
  captions = [str(c) for c in np.asarray(batch["caption"]).ravel()]

  def end_to_end():
    text, _ = enc.encode_text(captions)
    image = enc.encode_image(first_u8)
    cond = codec.condition(real[:, 0], real.shape[1])
    out = run(params, noise, jnp.asarray(cond), jnp.asarray(text), jnp.asarray(image))
    return np.asarray(codec.decode(np.asarray(out)))

  if timed:  # the encoders' compiles, outside the timing
    enc.encode_text(captions), enc.encode_image(first_u8)
  e2e_ms = per_clip_ms(end_to_end)
  video = np.clip(np.asarray(codec.decode(x)), -1, 1)
  moves = evals.toy_moves(batch)
  photo = [i for i, m in enumerate(moves) if m is not None]
  unit = (video + 1) / 2
  out = {
    "sampler": sampler,
    "steps": steps,
    "nfe": nfe,
    **evals.toy_metrics(video, real, moves),
    "first_frame_ssim": float(
      np.mean(evaluators.first_frame_ssim(unit[photo], (real[photo, 0] + 1) / 2))
    ),
    "flicker": float(np.mean(evaluators.flicker(unit).score)),
    "fvd": float(fvd(unit)),
    "found": [str(m) for m in evaluators.camera_move(unit[photo]).move],
    "dit_ms": dit_ms,
    "e2e_ms": e2e_ms,
    "clips": len(x),
  }
  if videos_dir:
    save_videos(videos_dir, video_io.to_uint8(unit), config.eval.fps)
  return out


def fvd_features(
  train_videos: np.ndarray, train_keys, real_eval: np.ndarray, seed: int = 0, steps: int = 300
):
  """``videos [N, T, H, W, 3] in [0, 1] -> toy FVD`` against ``real_eval`` (the held-out real
  clips, [0, 1]): a small video network (:mod:`pose_jax.evaluators.frechet`) trained to name
  each real training clip's move (photo clips) or source (footage), its 16 pooled features
  (few, for a covariance of a few dozen held-out clips: at 21 clips and 16 features a second
  draw of real clips is at 64, static copies at 1420, frame-shuffled clips at 408,
  ``bench/results/toy_fvd_n21_f16.json``)."""
  from pose_jax.evaluators import frechet

  labels_of = sorted({_label(k) for k in train_keys})
  labels = np.array([labels_of.index(_label(k)) for k in train_keys])
  net = frechet.train_video_net(
    train_videos, labels, len(labels_of), steps=steps, seed=seed, features=16
  )
  real = frechet.video_features(net, real_eval)
  return lambda videos: frechet.frechet_distance(frechet.video_features(net, videos), real)


def _label(key) -> str:
  """``photo/move/i`` -> the move; ``footage/name/...`` -> the footage's name."""
  a, b = str(key).split("/")[:2]
  return f"footage:{b}" if a == "footage" else b


def aggregate(results: list[dict]) -> dict:
  """``{column: {mean, std, min, max}}`` over the seeds' results of one row."""
  out = {}
  for key, _, _ in COLUMNS:
    values = np.array([r[key] for r in results if r.get(key) is not None], float)
    if len(values):
      out[key] = {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
      }
  return out


def write(workdir: str, out: str, rows: list[str], command: str) -> dict:
  """The table of the results in ``workdir/results`` (rows in ``rows`` order) as
  ``out.json`` / ``out.md`` / ``out_grid.png`` and ``workdir/index.html``; returns it."""
  table = {}
  for name in rows:
    results = [
      _read(p) for p in sorted(glob.glob(os.path.join(workdir, "results", f"{name}_s*.json")))
    ]
    if results:
      table[name] = {
        "what": results[0]["what"],
        "seeds": [r["seed"] for r in results],
        **aggregate(results),
      }
  teacher_json = os.path.join(workdir, "results", "teacher.json")
  teacher = _read(teacher_json) if os.path.exists(teacher_json) else {}
  doc = {"command": command, "teacher": teacher, "rows": table}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(doc, f, indent=1)
  with open(out + ".md", "w") as f:
    f.write(markdown(table))
  _grid(workdir, table, out + "_grid.png")
  _html(workdir, table)
  return doc


def _clip_index(path: str) -> int:
  return int(os.path.basename(path)[len("clip_") : -len(".mp4")])


def _read(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def markdown(table: dict) -> str:
  """One line per row: ``mean ± std`` over its seeds (``n`` seeds in the second column)."""
  head = ["recipe", "seeds", *[h for _, h, _ in COLUMNS]]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in table.values():
    cells = [row["what"], str(len(row["seeds"]))]
    for key, _, fmt in COLUMNS:
      m = row.get(key)
      if m is None:
        cells.append("-")
      elif len(row["seeds"]) == 1 or key == "nfe":
        cells.append(fmt.format(m["mean"]))
      else:
        cells.append(f"{fmt.format(m['mean'])} ± {fmt.format(m['std'])}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _grid(workdir: str, table: dict, path: str) -> None:
  """One row per recipe (seed 0's samples of the first :data:`GRID_CLIPS` clips, frames side
  by side), its name on the left; the real clips first."""
  from PIL import Image, ImageDraw

  from pose_jax.sampling import video_io

  rows = []
  for name in ["real", *table]:
    f = os.path.join(workdir, "videos", name, "samples.npy")
    if os.path.exists(f):
      clips = np.load(f)
      clips = clips[grid_clips(len(clips))]
      strip = np.concatenate([video_io.strip(c) for c in clips], axis=1)
      label = Image.new("RGB", (160, strip.shape[0]), "white")
      ImageDraw.Draw(label).text((4, 4), name, fill="black")
      rows.append(np.concatenate([np.asarray(label), strip], axis=1))
  if rows:
    Image.fromarray(np.concatenate(rows)).save(path)


def _html(workdir: str, table: dict) -> None:
  """``workdir/index.html``: the videos of each recipe side by side, the real clips first."""
  cells = []
  for name in ["real", *table]:
    folder = os.path.join(workdir, "videos", name)
    if not os.path.isdir(folder):
      continue
    what = table[name]["what"] if name in table else "real clips"
    vids = sorted(glob.glob(os.path.join(folder, "clip_*.mp4")), key=_clip_index)
    tags = "".join(
      f'<td><video src="videos/{name}/{os.path.basename(v)}" autoplay loop muted width="128">'
      "</video></td>"
      for v in vids
    )
    cells.append(f"<tr><th>{html.escape(what)}</th>{tags}</tr>")
  captions = os.path.join(workdir, "videos", "real", "captions.json")
  if os.path.exists(captions):
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _read(captions))
    cells.insert(0, f"<tr><th></th>{head}</tr>")
  page = "<!doctype html><title>POSE ablations</title><table>" + "".join(cells) + "</table>"
  with open(os.path.join(workdir, "index.html"), "w") as f:
    f.write(page)
