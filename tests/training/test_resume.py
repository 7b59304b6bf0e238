"""Resuming a workdir: which config changes are refused, damaged checkpoints skipped and set
aside, the metrics log cut back to the restored step, SIGTERM/SIGINT handling."""

import asyncio
import gc
import json
import logging
import os
import signal

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pose_jax.config import ConfigError
from pose_jax.training import checkpoint, loop, resume
from tests.helpers.tiny import load_config

PLAN = {"phases": ["pretrain", "priming", "equilibrium"], "steps": [4, 2, 2]}


def _saved(**pose):
  config = resume.config_json(load_config("toy_i2v", "scratch"))
  config["pose"].update(PLAN, **pose)
  return config


def _changes(now, phase_index=1, step=5):
  return resume.config_changes(_saved(), now, phase_index, step)


def test_config_changes_allows_schedules_logging_and_later_phases():
  now = _saved()
  now["optim"]["student"]["lr"] = 3e-6
  now["train"]["log_every"] = 7
  now["eval"]["every"] = 3
  now["pose"]["steps"] = [4, 3, 5]  # the current phase and a later one grow
  refused, allowed = _changes(now)
  assert refused == []
  assert "config.optim.student.lr: 0.001 -> 3e-06" in allowed
  assert "config.train.log_every: 20 -> 7" in allowed
  assert any("steps [4, 2, 2] -> [4, 3, 5]" in line for line in allowed), allowed
  assert _changes(_saved()) == ([], [])


@pytest.mark.parametrize(
  "edit,refusal",
  [
    (lambda c: c["model"].update(num_layers=3), "config.model.num_layers: 4 -> 3"),
    (lambda c: c["pose"].update(lam_cons=3.0), "config.pose.lam_cons: 10.0 -> 3.0"),
    (lambda c: c["data"].update(size=64), "config.data.size: 32 -> 64"),
    (lambda c: c.update(seed=1), "config.seed: 0 -> 1"),
    (lambda c: c["optim"]["student"].update(clip=0.0), "config.optim.student.clip: 1.0 -> 0.0"),
    (lambda c: c["optim"].update(freeze=["^x"]), "config.optim.freeze: [] -> ['^x']"),
    (lambda c: c["pose"].update(phases=["pretrain"], steps=[4]), "the phases up to it"),
    (lambda c: c["pose"].update(steps=[3, 3, 2]), "the phases before 'priming' are done"),
    (lambda c: c["pose"].update(steps=[4, 0, 2]), "past the new end 4 of phase 'priming'"),
  ],
)
def test_config_changes_refuses_what_a_resume_cannot_change(edit, refusal):
  now = _saved()
  edit(now)
  refused, _ = _changes(now)
  assert len(refused) == 1 and refusal in refused[0], refused


def test_check_config_names_every_refused_key():
  config = load_config("toy_i2v", "scratch")
  config.pose.phases, config.pose.steps = tuple(PLAN["phases"]), tuple(PLAN["steps"])
  meta = {"phase_index": 2, "config": resume.config_json(config)}
  resume.check_config(meta, config, 8, "WD")  # the same config: nothing to say
  config.model.num_layers, config.pose.d_width = 2, 8
  with pytest.raises(ConfigError, match="WD was written with another config") as e:
    resume.check_config(meta, config, 8, "WD")
  assert "config.model.num_layers: 4 -> 2" in str(e.value)
  assert "config.pose.d_width: 32 -> 8" in str(e.value)


# --- damaged checkpoints -------------------------------------------------------------------------
def _workdir(tmp_path, steps=(1, 2, 3)):
  mngr = checkpoint.manager(str(tmp_path), every=1, keep=10, async_save=False)
  for s in steps:
    state = {"w": jnp.full((64, 64), float(s)), "b": jnp.arange(8.0) + s}
    checkpoint.save(mngr, s, state, {"phase_index": 0, "has_teacher": False}, force=True)
  return mngr


def _restore_into(mngr):
  target = {"w": jnp.zeros((64, 64)), "b": jnp.zeros(8)}
  return lambda step, meta: checkpoint.restore(mngr, step, target)[0]


def _truncate_arrays(step_dir):
  for root, _, files in os.walk(step_dir / "state"):
    for f in files:
      if root.endswith(os.sep + "d"):  # the OCDBT data files
        os.truncate(os.path.join(root, f), 10)


@pytest.mark.parametrize(
  "damage,reason",
  [
    (_truncate_arrays, "OUT_OF_RANGE"),
    (lambda d: (d / "meta" / "metadata").write_text('{"phase_index": '), "JSONDecodeError"),
  ],
)
def test_damaged_latest_checkpoint_falls_back_and_is_kept_aside(tmp_path, capsys, damage, reason):
  mngr = _workdir(tmp_path)
  damage(tmp_path / "checkpoints" / "3")
  step, _, state = resume.newest_intact(mngr, str(tmp_path), _restore_into(mngr))
  assert step == 2 and float(state["w"][0, 0]) == 2.0
  out = capsys.readouterr().out
  assert "checkpoint 3 is damaged (" in out and reason in out, out
  assert "resuming from step 2, the newest intact checkpoint" in out
  assert mngr.all_steps() == [1, 2]  # 3 can be written again ...
  assert os.listdir(tmp_path / resume.DAMAGED_DIR) == ["3"]  # ... and the damaged one is kept


def test_empty_step_folder_is_skipped(tmp_path, capsys):
  mngr = _workdir(tmp_path, steps=(1, 2))
  (tmp_path / "checkpoints" / "5").mkdir()
  mngr.reload()
  step, _, _ = resume.newest_intact(mngr, str(tmp_path), _restore_into(mngr))
  assert step == 2 and "checkpoint 5 is damaged" in capsys.readouterr().out


def test_every_checkpoint_damaged_is_an_error_that_moves_nothing(tmp_path):
  mngr = _workdir(tmp_path, steps=(1, 2))
  for s in (1, 2):
    _truncate_arrays(tmp_path / "checkpoints" / str(s))
  with pytest.raises(resume.CheckpointDamaged, match="no checkpoint restores .*step 1: .*step 2:"):
    resume.newest_intact(mngr, str(tmp_path), _restore_into(mngr))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
  assert not (tmp_path / resume.DAMAGED_DIR).exists()


def test_a_config_refusal_is_not_taken_for_damage(tmp_path):
  mngr = _workdir(tmp_path)

  def refuse(step, meta):
    raise ConfigError("config.model.num_layers: 4 -> 2")

  with pytest.raises(ConfigError):
    resume.newest_intact(mngr, str(tmp_path), refuse)
  assert mngr.all_steps() == [1, 2, 3] and not (tmp_path / resume.DAMAGED_DIR).exists()


def test_no_checkpoint_is_a_fresh_start(tmp_path):
  mngr = checkpoint.manager(str(tmp_path), every=1, keep=2, async_save=False)
  assert resume.newest_intact(mngr, str(tmp_path), _restore_into(mngr)) is None


# --- the metrics log -----------------------------------------------------------------------------
def test_metric_writer_drops_steps_past_the_restart_and_repairs_a_torn_line(tmp_path):
  log = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": s, "loss": float(s)}) for s in (1, 2, 3, 4)]
  log.write_text("\n".join(lines + ["not json, kept"]) + '\n{"step": 5, "lo')  # torn last line
  writer = loop.MetricWriter(str(tmp_path), tensorboard=False, start_step=2)
  writer.write(3, {"loss": 30.0})
  writer.close()
  got = log.read_text().splitlines()
  assert got[:2] == lines[:2] and got[2] == "not json, kept"
  assert [json.loads(x)["step"] for x in got[3:]] == [3] and json.loads(got[3])["loss"] == 30.0


def test_metric_writer_keeps_a_log_that_ends_at_the_restart(tmp_path):
  log = tmp_path / "metrics.jsonl"
  log.write_text('{"step": 1}\n{"step": 2}\n')
  before = os.stat(log).st_mtime_ns
  loop.MetricWriter(str(tmp_path), tensorboard=False, start_step=2).close()
  assert log.read_text() == '{"step": 1}\n{"step": 2}\n' and os.stat(log).st_mtime_ns == before


# --- signals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_idle_exits_at_once_and_while_busy_after_the_step(sig):
  watch = loop.PreemptionWatch()
  try:
    watch.idle_at(6)  # the checkpoint at step 6 is current: exit now
    with pytest.raises(loop.Preempted) as e:
      os.kill(os.getpid(), sig)
    assert e.value.code == 0 and e.value.step == 6 and signal.Signals(sig).name in str(e.value)
    watch.signalled = None
    watch.busy()  # steps run: the flag is set, the step in flight finishes
    os.kill(os.getpid(), sig)
    assert watch.reached(None, 7)
  finally:
    watch.close()
  assert signal.getsignal(sig) is not watch._handle


def test_a_second_ctrl_c_interrupts_at_once():
  watch = loop.PreemptionWatch()
  try:
    watch.busy()
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  finally:
    watch.close()


def test_nothing_trained_yet_says_so():
  assert "nothing trained yet" in str(loop.Preempted(0, "SIGTERM"))
  assert "checkpoint written at step 4" in str(loop.Preempted(4, "SIGINT"))


def test_truncated_array_reason_is_one_line(tmp_path):
  mngr = _workdir(tmp_path, steps=(1,))
  _truncate_arrays(tmp_path / "checkpoints" / "1")
  with pytest.raises(Exception) as e:
    mngr.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  reason = resume._reason(e.value)
  assert reason.startswith("ValueError: OUT_OF_RANGE") and "\n" not in reason, reason
  assert np.isfinite(len(reason)) and len(reason) <= 340


def test_failed_read_echoes_are_dropped_and_other_errors_kept(caplog):
  """A failed restore's late echoes (an orbax read's task exception, never retrieved, logged by
  asyncio when collected) are dropped once restores begin; any other task error still logs."""
  resume._quiet_failed_reads()

  async def _read_array_index_and_device_put():  # orbax's name: the echo
    raise ValueError("OUT_OF_RANGE: Error reading the truncated file")

  async def something_else():
    raise ValueError("a real error")

  def fail_unretrieved(make):
    loop = asyncio.new_event_loop()
    task = loop.create_task(make())
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    del task
    gc.collect()

  with caplog.at_level(logging.ERROR, logger="asyncio"):
    fail_unretrieved(_read_array_index_and_device_put)
    fail_unretrieved(something_else)
  logged = [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
  assert logged == ["a real error"]
  assert resume.is_read_echo(RuntimeError("Event loop is closed"))
  assert not resume.is_read_echo(ValueError("OUT_OF_RANGE"))  # the text alone is not the echo
