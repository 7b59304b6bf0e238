"""A whole one-step pipeline folder: ``convert export --format=diffusers --pipeline=DIR``.

``DST`` is the teacher's diffusers ``WanImageToVideoPipeline`` folder ``DIR`` (VAE, text and
image encoders, tokenizer, image processor, scheduler: copied as they are) with the student in
``transformer/`` (:func:`pose_jax.convert.export.export_checkpoint`), so that
``WanImageToVideoPipeline.from_pretrained(DST)`` loads the distilled model with nothing else.

It says it is one-step: ``model_index.json`` gains ``"_pose_jax": {"num_inference_steps": 1,
"guidance_scale": 1.0, ...}`` (keys beginning with ``_`` are metadata to diffusers' loader, which
ignores them), and the scheduler config the same entries. The scheduler itself is unchanged: at
one step the flow-matching UniPC of Wan2.1 takes ``x0 = x1 - v`` from pure noise, the student's
own one-step sample. Diffusers reads no default step count or guidance from a folder (its
``__call__`` defaults to 50 steps and guidance 5), so a diffusers user still passes
``num_inference_steps=1, guidance_scale=1.0``; ``pose_jax.sampling --pipeline=DST`` samples it
in one step by default.
"""

from __future__ import annotations

import json
import shutil

from etils import epath

from pose_jax.convert import destination, export
from pose_jax.paths import local_only

WHAT = "a pose_jax one-step pipeline export"
ONE_STEP = {"num_inference_steps": 1, "guidance_scale": 1.0}
MARK = "_pose_jax"


def is_pipeline_export(path) -> bool:
  path = epath.Path(path) / "model_index.json"
  return path.is_file() and MARK in json.loads(path.read_text())


def export_pipeline(src: str, dst: str, pipeline: str, *, overwrite: bool = False, **kw) -> list:
  """Writes ``dst`` (module doc); ``kw`` go to :func:`export.export_checkpoint` (step, which,
  dtype, config, max_shard_bytes, progress). Returns the top-level names written."""
  why = "a pipeline folder is copied on local disk"
  pipeline = epath.Path(local_only(pipeline, "--pipeline", why))
  dst = epath.Path(local_only(dst, "--dst", why))
  index_path = pipeline / "model_index.json"
  if not index_path.is_file() or not (pipeline / "transformer").is_dir():
    raise ValueError(
      f"{pipeline}: not a diffusers pipeline folder (model_index.json and transformer/ expected)"
    )
  index = json.loads(index_path.read_text())
  if "ImageToVideo" not in index.get("_class_name", ""):
    raise ValueError(f"{pipeline}: a {index.get('_class_name')}, not an image-to-video pipeline")
  destination.check(dst, overwrite, is_pipeline_export, WHAT)
  tmp = destination.temporary_sibling(dst, "pipeline-tmp")
  tmp.rmtree(missing_ok=True)
  tmp.mkdir(parents=True)
  try:
    for entry in pipeline.iterdir():
      if entry.name in ("transformer", "transformer_2", "model_index.json"):
        continue
      (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
    export.export_checkpoint(src, str(tmp / "transformer"), "diffusers", **kw)
    note = {**ONE_STEP, "distilled_by": "pose_jax (POSE)", "source": str(src)}
    index.pop("transformer_2", None)
    (tmp / "model_index.json").write_text(json.dumps({**index, MARK: note}, indent=2))
    sched = tmp / "scheduler" / "scheduler_config.json"
    if sched.is_file():
      sched.write_text(json.dumps({**json.loads(sched.read_text()), MARK: ONE_STEP}, indent=2))
    destination.install(tmp, dst, overwrite, is_pipeline_export, WHAT)
  except BaseException:
    tmp.rmtree(missing_ok=True)
    raise
  return sorted(p.name for p in dst.iterdir())
