"""``gs://`` for real: the toy run, conversion and sampling against a GCS emulator
(fake-gcs-server, ``conftest.py``), nothing mocked.

One toy run (the SMALL config of ``tests/helpers/toy_runs.py``) trains with
``--workdir=gs://bucket/run``, is SIGKILLed once its step-4 checkpoint is committed, and is
rerun to the end; the tests below read that bucket. Its toy data is built on local disk
(``$TMPDIR/pose_jax_toy_data/gs/bucket/run/data``, ``pose_jax.data.source.toy_root``):
array_record reads only local shards, and the clips are a function of the config.
"""

import json

import numpy as np
import pytest
from etils import epath

from pose_jax.convert import cli, export, orbax_io
from pose_jax.data import records
from pose_jax.data.source import toy_root
from pose_jax.training import checkpoint, resume
from tests.helpers import ROOT, gcs
from tests.helpers import toy_runs as runs
from tests.sampling.test_sample import sample_cli

pytestmark = pytest.mark.slow
WORKDIR = f"gs://{gcs.BUCKET}/run"


@pytest.fixture(scope="module")
def bucket_run(emulator, toy_reference_run):
  """``(workdir, output of the rerun)``: trained in the bucket, killed after checkpoint 4,
  resumed to the end."""
  first = runs.start(WORKDIR, data_from=toy_reference_run[0])
  runs.wait_for_checkpoint(WORKDIR, 4, [first])
  runs.kill(first)
  return WORKDIR, runs.finish(runs.start(WORKDIR))


def test_killed_gs_run_resumes_bit_exactly_with_logs_in_the_bucket(
  bucket_run, toy_reference_run, emulator
):
  workdir, out = bucket_run
  assert "resumed from step" in out and "Traceback" not in out, out[-3000:]
  runs.assert_same_run(toy_reference_run[0], workdir)  # final.json fingerprints, loss traces
  objects = emulator.objects("run/")
  assert "run/metrics.jsonl" in objects and "run/final.json" in objects
  tags = runs.tensorboard_tags(workdir)  # the rerun's event file, read from the bucket
  assert {"loss/dmd", "loss/d", "grad_norm/student", "eval/ema/flicker"} <= tags, tags
  index = json.loads(epath.Path(workdir, "samples", "step_8", "index.json").read_text())
  assert {f"run/samples/step_8/{r['video']}" for r in index["videos"]} <= set(objects)
  # The toy data went to local disk, not into the bucket nor into a local folder named "gs:".
  assert not [o for o in objects if o.startswith("run/data/")]
  assert not (epath.Path(ROOT) / "gs:").exists()
  assert (epath.Path(toy_root(workdir)) / "train" / records.META).exists()


def test_a_half_written_checkpoint_in_the_bucket_is_never_restored(bucket_run, emulator):
  """Step 10: every object of step 8 but orbax's commit markers (a save cut short). Neither the
  resume (the manager's steps, ``resume.newest_intact``) nor ``convert export`` takes it."""
  workdir, _ = bucket_run
  root = epath.Path(workdir) / "checkpoints"
  names = [o.removeprefix("run/checkpoints/8/") for o in emulator.objects("run/checkpoints/8/")]
  for name in names:
    if not name.endswith(orbax_io.COMMIT_MARKER):
      (root / "10" / name).parent.mkdir(parents=True, exist_ok=True)
      (root / "10" / name).write_bytes((root / "8" / name).read_bytes())
  assert "run/checkpoints/10/state/manifest.ocdbt" in emulator.objects("run/checkpoints/10/")
  try:
    committed = sorted(
      int(o.split("/")[2])
      for o in emulator.objects("run/checkpoints/")
      if o.endswith(f"/{orbax_io.COMMIT_MARKER}") and o.count("/") == 3
    )
    mngr = checkpoint.manager(workdir, every=2, keep=10, async_save=False)
    assert mngr.all_steps() == committed and committed[-2:] == [6, 8] and mngr.latest_step() == 8
    read = lambda step, meta: checkpoint.restore_meta(mngr, step)
    step, meta, _ = resume.newest_intact(mngr, workdir, read)
    assert step == 8 and meta["phase_index"] == 2
    mngr.close()
    item, _, _ = export.resolve_source(workdir)
    assert str(item) == f"{workdir}/checkpoints/8/state"
  finally:
    (root / "10").rmtree()


def test_export_reads_a_gs_workdir_and_import_writes_a_gs_teacher(
  bucket_run, toy_reference_run, tmp_path
):
  """``convert export --src=gs://...`` writes the same safetensors bytes as the export of the
  local reference run; ``convert import --dst=gs://...`` writes a teacher that reads back (as
  ``ckpt.init_from`` reads it) equal to the same import written locally."""
  workdir, _ = bucket_run
  for name, src in (("gs", workdir), ("local", toy_reference_run[0])):
    args = ["export", f"--src={src}", f"--dst={tmp_path / name}", "--format=diffusers"]
    assert cli.main(args) == 0
  files = sorted(p.name for p in (tmp_path / "local").iterdir())
  assert "config.json" in files and any(f.endswith(".safetensors") for f in files)
  for f in files:
    assert (tmp_path / "gs" / f).read_bytes() == (tmp_path / "local" / f).read_bytes(), f
  teacher = f"gs://{gcs.BUCKET}/teacher"
  for dst in (teacher, tmp_path / "teacher"):
    args = ["import", "--format=diffusers", f"--src={tmp_path / 'gs'}", f"--dst={dst}"]
    assert cli.main(args) == 0
  assert orbax_io.is_model_checkpoint(teacher)
  cfg_gs, gs = orbax_io.restore_params(teacher)
  cfg_local, local = orbax_io.restore_params(str(tmp_path / "teacher"))
  assert cfg_gs == cfg_local and cfg_gs.num_layers == 2
  flat_gs, flat_local = (dict(_leaves(t)) for t in (gs, local))
  assert sorted(flat_gs) == sorted(flat_local) and len(flat_gs) > 10
  for key, value in flat_gs.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_local[key]), err_msg=key)


def _leaves(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, (*prefix, k))
  else:
    yield "/".join(map(str, prefix)), tree


def test_sampling_reads_a_gs_workdir_and_writes_into_the_bucket(
  bucket_run, toy_reference_run, tmp_path
):
  """The same photo and prompt sampled from the bucket's run (image read from and video written
  to the bucket) and from the local reference run: the same mp4, byte for byte."""
  from PIL import Image

  from pose_jax.data import toy as toy_data

  workdir, _ = bucket_run
  Image.fromarray(toy_data.load_photo("coffee")).save(tmp_path / "photo.png")
  photo = epath.Path(f"gs://{gcs.BUCKET}/photo.png")
  photo.write_bytes((tmp_path / "photo.png").read_bytes())
  prompt = "--prompt=a photo of a cup of coffee, the camera pans left"
  out = f"gs://{gcs.BUCKET}/sampled/v.mp4"
  r = sample_cli(f"--ckpt={workdir}", f"--image={photo}", prompt, f"--out={out}", cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"wrote {out}: 5 frames 32x32" in r.stdout, r.stdout
  ref = tmp_path / "ref.mp4"
  local = [f"--ckpt={toy_reference_run[0]}", f"--image={tmp_path / 'photo.png'}", prompt]
  r = sample_cli(*local, f"--out={ref}", cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert epath.Path(out).read_bytes() == ref.read_bytes()
  assert epath.Path(out).with_suffix(".png").read_bytes() == ref.with_suffix(".png").read_bytes()
