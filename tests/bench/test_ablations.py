"""bench/ablations.py: the row configs, the table's arithmetic, and a 1-seed miniature of the
whole bench run twice (the second run resumes: nothing is retrained). The miniature proves the
script works; its numbers are not asserted."""

import json
import os
import subprocess
import sys

import pytest

from bench import ablation_recipes as ablations
from bench import ablation_report
from tests.helpers import FAST_COMPILE, ROOT
from tests.helpers.tiny import load_config


def test_rows_train_the_same_steps_from_the_teacher():
  config = load_config("toy_i2v")  # phases (priming, equilibrium): steps (60, 120)
  full = ablations.row_config(config, ablations.ROWS["pose_1"], 2, "/t")
  assert full.pose.phases == ("priming", "equilibrium") and full.pose.steps == (60, 120)
  assert full.seed == 2 and full.ckpt.init_from == "/t"
  no_priming = ablations.row_config(config, ablations.ROWS["no_priming"], 0, "/t")
  assert no_priming.pose.phases == ("equilibrium",) and no_priming.pose.steps == (180,)
  dmd = ablations.row_config(config, ablations.ROWS["dmd_only"], 0, "/t")
  assert dmd.pose.phases == ("priming",) and dmd.pose.steps == (180,)
  copy = ablations.row_config(config, ablations.ROWS["trainable_copy"], 0, "/t")
  assert copy.pose.d_backbone == "trainable_copy" and config.pose.d_backbone == "ema"
  assert ablations.row_config(config, ablations.ROWS["pose_4"], 0, "/t").pose.student_steps == 4
  assert ablations.row_config(config, ablations.ROWS["no_csds"], 0, "/t").pose.lam_cons == 0


def test_table_is_mean_and_spread_over_seeds():
  results = [
    {"seed": s, "what": "x", "motion_accuracy": a, "nfe": 1} for s, a in ((0, 0.2), (1, 0.6))
  ]
  agg = ablation_report.aggregate(results)
  assert agg["motion_accuracy"] == pytest.approx({"mean": 0.4, "std": 0.2, "min": 0.2, "max": 0.6})
  md = ablation_report.markdown({"r": {"what": "POSE", "seeds": [0, 1], **agg}})
  assert "| POSE | 2 | 1 | 0.40 ± 0.20 |" in md


def _bench(workdir, out):
  args = [
    sys.executable,
    "bench/ablations.py",
    "--config=configs/toy_i2v.py:scratch",  # pretrains its own (tiny) teacher
    f"--workdir={workdir}",
    f"--out={out}",
    "--seeds=1",
    "--rows=teacher_cfg,teacher_1,pose_2",
    "--teacher_steps=2",
    "--fvd_steps=5",
    "--config.model.num_layers=1",
    "--config.model.num_heads=2",
    "--config.model.head_dim=16",
    "--config.model.ffn_dim=32",
    "--config.pose.steps=(3,2,2)",
    "--config.data.clips_per_move=1",
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": FAST_COMPILE}
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_miniature_bench_runs_and_resumes(tmp_path):
  workdir, out = tmp_path / "bench", tmp_path / "out" / "ablations"
  r = _bench(workdir, out)
  assert r.returncode == 0, r.stderr[-3000:]
  done = sorted(os.listdir(workdir / "results"))
  assert done == [
    "pose_2_s0.json",
    "teacher.json",
    "teacher_1_s0.json",
    "teacher_cfg_s0.json",
  ]
  table = json.loads((tmp_path / "out" / "ablations.json").read_text())["rows"]
  assert list(table) == ["teacher_cfg", "teacher_1", "pose_2"]
  assert table["teacher_cfg"]["nfe"]["mean"] == 4 and table["pose_2"]["nfe"]["mean"] == 2
  row = json.loads((workdir / "results" / "pose_2_s0.json").read_text())
  assert row["train_wall_s"] > 0 and 0 <= row["motion_accuracy"] <= 1 and row["fvd"] >= 0
  md = (tmp_path / "out" / "ablations.md").read_text()
  assert md.count("\n") == 2 + 3 and "POSE, 2 steps" in md
  assert (tmp_path / "out" / "ablations_grid.png").stat().st_size > 0
  page = (workdir / "index.html").read_text()
  assert page.count("<tr>") == 1 + 4 and "videos/pose_2/clip_0.mp4" in page  # captions + 4
  assert (workdir / "videos" / "pose_2" / "clip_0.mp4").stat().st_size > 0
  mtime = (workdir / "results" / "pose_2_s0.json").stat().st_mtime
  r = _bench(workdir, out)  # everything done: only the table is rewritten
  assert r.returncode == 0, r.stderr[-3000:]
  assert (workdir / "results" / "pose_2_s0.json").stat().st_mtime == mtime
  assert '"row"' not in r.stdout and "[priming]" not in r.stdout + r.stderr
