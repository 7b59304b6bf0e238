"""End-to-end training runs on the toy config: logs and samples, exact resume after SIGTERM and
SIGKILL, non-finite stop, a distillation run from a converted teacher."""

import dataclasses
import json
import os
import re
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from pose_jax import config as config_lib
from pose_jax import sharding as shd
from pose_jax.convert import orbax_io
from pose_jax.data import records
from pose_jax.pose import models as pose_models
from pose_jax.pose.config import PoseConfig
from pose_jax.sampling import video_io
from pose_jax.training import checkpoint as ckpt_lib
from pose_jax.training import train
from tests.helpers import toy_runs as runs
from tests.helpers.tiny import load_config


@pytest.fixture(scope="module")
def full_run(toy_reference_run):
  return toy_reference_run


@pytest.mark.slow
def test_full_run_logs_phases_and_tensorboard(full_run):
  workdir, out = full_run
  assert "[pretrain] step 4/4" in out and "[equilibrium] step 8/8" in out
  assert "student_1_step" in out
  # A quiet console: the run's own lines, no library INFO logs (absl's "I1203 07:48:28 ..."
  # prefix) without --verbosity=0; a whole (8-step, log_every=1) run fits a screen.
  lines = out.splitlines()
  assert not [x for x in lines if re.match(r"I\d{4} ", x)] and len(lines) < 60, out[-3000:]
  tags = runs.tensorboard_tags(workdir)
  want = {"loss/flow", "loss/dmd", "loss/d", "grad_norm/student", "grad_x0/dmd", "grad_x0/adv"}
  want |= {"d/acc_real", "d/acc_fake", "d/margin", "d/margin_block1", "d/r1_over_hinge"}
  assert want <= tags and "loss" not in tags, tags  # no summed loss: the terms are apart
  # Sample videos + proxy metrics at each phase end (eval.every = 0).
  assert "eval/student/first_frame_psnr" in tags and "eval/ema/flicker" in tags, tags
  assert sorted(os.listdir(workdir / "samples")) == ["step_4", "step_6", "step_8"]
  video = video_io.read_mp4(str(workdir / "samples" / "step_8" / "student_0.mp4"))
  assert video.shape == (5, 32, 32, 3) and video.std() > 1  # 5 frames of toy clip, not blank


@pytest.mark.slow
def test_e_restarts_from_the_pretrained_student(full_run):
  """Two priming steps after the pretrain handoff, E is the pretrained student moved by two EMA
  updates, not an average still holding the random initialisation (as it was before the
  handoff re-based it)."""
  workdir, _ = full_run
  flat = lambda tree: np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree.leaves(tree)])
  gap = {}
  for step in (4, 6):  # pretrain's end (before the handoff), 2 steps into priming
    state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    gap[step] = float(np.linalg.norm(flat(state["ema"]) - flat(state["params"]["student"])))
  assert gap[6] < 0.5 * gap[4], gap  # without the re-base: 0.267 vs 0.269


@pytest.mark.slow
def test_sigterm_then_resume_equals_the_uninterrupted_run(full_run, tmp_path):
  """SIGTERM: the step finishes, a checkpoint is written, exit 0; the rerun resumes there and
  ends with the reference's parameters (bitwise) and loss traces. (SIGKILL after a checkpoint,
  then a resume: the gs:// run of tests/cloud and the two-process run of test_multihost.)"""
  proc = runs.start(tmp_path, data_from=full_run[0])
  runs.wait_for_checkpoint(tmp_path, 2, [proc])
  proc.send_signal(signal.SIGTERM)
  out = runs.finish(proc)  # exit status 0
  found = re.search(r"preempted \(SIGTERM\): checkpoint written at step (\d+)", out)
  assert found, out[-2000:]
  step = int(found.group(1))
  assert 2 <= step < 6 and os.path.isdir(tmp_path / "checkpoints" / str(step))
  assert not os.path.exists(tmp_path / "final.json")
  out = runs.finish(runs.start(tmp_path))
  assert "resumed from step" in out
  runs.assert_same_run(full_run[0], tmp_path)


@dataclasses.dataclass(frozen=True)
class _PoisonedSource(records.SyntheticSource):
  """Examples 8.. have NaN latents: with batch 8 and no shuffle, every third batch is clean."""

  def __getitem__(self, index):
    ex = super().__getitem__(index)
    if index >= 8:
      ex["latents"] = np.full_like(ex["latents"], np.nan)
    return ex


def test_non_finite_steps_stop_the_run_and_keep_the_checkpoint(tmp_path):
  config = load_config("toy_i2v", "scratch")
  config.model.num_layers = 2
  config.pose.phases = ("pretrain",)
  config.pose.steps = (10,)
  config.ckpt.every = 1
  config.ckpt.async_save = False
  config.train.max_bad_steps = 2
  config.train.log_every = 1
  iterator = records.make_iterator(
    _PoisonedSource(num_examples=24), 8, shuffle=False, shard_by_process=False
  )
  with pytest.raises(train.NonFiniteError, match="2 consecutive non-finite steps at step 3"):
    train.run(config, str(tmp_path), data=(iterator, None))
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()) == [1, 2]
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [x["finite"] for x in lines] == [1.0, 0.0, 0.0] and lines[-1]["skipped"] == 2.0
  mngr = ckpt_lib.manager(str(tmp_path), every=1, keep=5, async_save=False)
  saved = mngr.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  leaves = jax.tree.leaves(saved["state"]["params"]["student"])
  assert leaves and all(np.all(np.isfinite(np.asarray(x))) for x in leaves)


@pytest.mark.slow
def test_distillation_starts_from_the_init_from_teacher(tmp_path):
  """No pretrain phase: the student starts as the converted teacher of ``ckpt.init_from``, read
  straight into its sharding; frozen here, it stays that teacher (seed 7, not the run's seed 0)
  bit for bit."""
  config = load_config("toy_i2v", "scratch")
  config.model.num_layers = 2
  config.pose.phases, config.pose.steps = ("priming",), (1,)
  config.optim.freeze = ("^student/",)
  cfg = config_lib.wan_config(config.model)
  mesh = shd.make_mesh(config.mesh.shape)
  _, teacher, _, _ = pose_models.build(cfg, PoseConfig.from_config(config.pose), 7, mesh)
  path = tmp_path / "teacher"
  items = dict(
    params=ocp.args.PyTreeSave(nnx.to_pure_dict(teacher)),
    wan_config=ocp.args.JsonSave(orbax_io.model_meta(cfg)),
  )
  ocp.Checkpointer(ocp.CompositeCheckpointHandler()).save(path, args=ocp.args.Composite(**items))
  config.ckpt.init_from = str(path)
  iterator = records.make_iterator(
    records.SyntheticSource(num_examples=8), 8, shuffle=False, shard_by_process=False
  )
  state = train.run(config, str(tmp_path / "run"), data=(iterator, None))
  assert int(state.step) == 1 and float(state.skipped) == 0
  student, want = jax.tree.leaves(state.params["student"]), jax.tree.leaves(teacher)
  assert len(student) == len(want) > 0
  for got, ref in zip(student, want):
    assert got.sharding == ref.sharding and np.array_equal(np.asarray(got), np.asarray(ref))
