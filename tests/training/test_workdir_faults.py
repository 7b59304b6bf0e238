"""Faults on a real toy workdir (copies of the session's reference run): a changed recipe is
refused before any work, a damaged latest checkpoint falls back to the newest intact one and
still ends bit-identical, SIGTERM during a compile exits at once, and the README's export
command works on what the trainer writes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import ROOT
from tests.helpers import toy_runs as runs


@pytest.fixture
def copy(toy_reference_run, tmp_path):
  """A copy of the finished reference workdir (checkpoints 1, 2, 4, 6, 8), without final.json."""
  workdir = tmp_path / "run"
  shutil.copytree(toy_reference_run[0], workdir)
  (workdir / "final.json").unlink()
  return workdir


def test_resume_with_another_model_is_refused_in_one_line(copy):
  proc = runs.start(copy, extra=["--config.model.num_layers=3", "--config.train.log_every=2"])
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 2, out[-2000:]
  errors = [x for x in out.splitlines() if x.startswith("error: ")]
  assert len(errors) == 1 and "config.model.num_layers: 2 -> 3" in errors[0], out[-2000:]
  assert "config.train.log_every" not in errors[0]  # allowed: not part of the refusal
  assert "Traceback" not in out and not (copy / "final.json").exists()


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_and_ends_bit_identical(toy_reference_run, copy):
  data = copy / "checkpoints" / "8" / "state" / "ocdbt.process_0" / "d"
  biggest = max(data.iterdir(), key=lambda p: p.stat().st_size)
  os.truncate(biggest, 1000)
  out = runs.finish(runs.start(copy))
  assert "checkpoint 8 is damaged (ValueError: OUT_OF_RANGE" in out, out[-3000:]
  assert "resumed from step 6" in out and "Traceback" not in out
  assert os.listdir(copy / "checkpoints_damaged") == ["8"]
  runs.assert_same_run(toy_reference_run[0], copy)
  logged = lambda d: [json.loads(x)["step"] for x in (d / "metrics.jsonl").read_text().splitlines()]
  steps, ref = logged(copy), logged(toy_reference_run[0])
  assert sorted(steps) == sorted(ref)  # steps 7-8 logged once, as in the reference


@pytest.mark.slow
def test_sigterm_during_a_compile_exits_at_once(copy):
  for step in ("6", "8"):  # resume at 4: the priming step is compiled first
    shutil.rmtree(copy / "checkpoints" / step)
  proc = runs.start(copy, compile_cache=False)  # a real compile: tens of seconds here
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if "[priming] compiling the step" in line:
      break
  time.sleep(1.0)  # inside the priming compile (no compile cache: tens of seconds)
  proc.send_signal(signal.SIGTERM)
  t0 = time.time()
  out = "".join(lines) + proc.communicate(timeout=120)[0]
  waited = time.time() - t0
  assert proc.returncode == 0, out[-2000:]
  assert "preempted (SIGTERM): checkpoint written at step 4" in out, out[-2000:]
  shown = "\n".join(x for x in out.splitlines() if not x.startswith(("I1", "W1")))
  assert "[priming] step" not in out and waited < 15, (waited, shown[-3000:])
  assert sorted(int(s) for s in os.listdir(copy / "checkpoints") if s.isdigit()) == [1, 2, 4]


def test_readme_export_command_works_on_a_train_workdir(toy_reference_run, tmp_path):
  """``convert export --src=WORKDIR --which=ema``: the trainer saves the model config with its
  checkpoints; diffusers loads the export, with the EMA weights of the last step."""
  import orbax.checkpoint as ocp
  from diffusers import WanTransformer3DModel

  workdir, dst = toy_reference_run[0], tmp_path / "ema"
  cmd = [sys.executable, "-m", "pose_jax.convert", "export", f"--src={workdir}", "--which=ema"]
  r = subprocess.run(
    [*cmd, f"--dst={dst}", "--noprogress"], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 0, r.stderr[-2000:]
  model = WanTransformer3DModel.from_pretrained(dst)
  assert model.config.num_layers == 2
  step = ocp.CheckpointManager(workdir / "checkpoints").restore(
    8, args=ocp.args.Composite(state=ocp.args.StandardRestore())
  )["state"]
  want = np.asarray(step["ema"]["blocks"]["ffn"]["proj_out"]["kernel"]["value"][1]).T
  got = model.blocks[1].ffn.net[2].weight.detach().numpy()
  np.testing.assert_array_equal(got, want)
