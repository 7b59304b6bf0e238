"""The CLI entry point and config validation."""

import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest
from ml_collections import config_flags  # noqa: F401  (loads configs the way main does)

from pose_jax import config as config_lib
from tests.helpers import ROOT, xla_flags
from tests.helpers.tiny import load_config


def _main(*flags):
  env = dict(os.environ, XLA_FLAGS=xla_flags(4))
  return subprocess.run(
    [sys.executable, "-m", "pose_jax.main", *flags],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize(
  "flags,message",
  [
    (
      ["--config.pose.lam_consx=0"],
      "error: --config.pose.lam_consx: config.pose has no key 'lam_consx'; did you mean "
      "config.pose.lam_cons?",
    ),
    (["--config.posex.lam_cons=0"], "config has no key 'posex'; did you mean config.pose?"),
    (["--config.data.frames=8"], "error: config.data.frames: 8 is not 1+4k"),
    (["--config.train.log_every=0"], "error: config.train.log_every: 0 must be >= 1"),
    (["--config.train.batch_size=0"], "error: config.train.batch_size: 0 must be >= 1"),
    (["--config.pose.lam_cons=abc"], "could not convert string to float: 'abc'"),
  ],
)
def test_config_faults_are_one_line_with_the_dotted_key_and_exit_2(flags, message, tmp_path):
  r = _main("--config=configs/toy_i2v.py", f"--workdir={tmp_path / 'w'}", *flags)
  lines = [x for x in r.stderr.splitlines() if not x.startswith(("I1", "W1"))]
  assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr[-2000:]
  assert not (tmp_path / "w").exists()  # no work was started


def test_a_missing_config_file_is_one_line():
  r = _main("--config=configs/nope.py")
  lines = [x for x in r.stderr.splitlines() if not x.startswith(("I1", "W1"))]
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
  assert "--config=configs/nope.py" in lines[0] and "No such file" in lines[0]


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("mesh.shape", (3, 1, 1, 1), "config.mesh.shape: mesh shape"),
    ("mesh.slices", 3, "config.mesh.slices: mesh slices=3 must be a positive divisor"),
    ("train.batch_size", 3, "config.train.batch_size: 3 is not divisible"),
    ("train.micro_batches", 3, "config.train.micro_batches: 3 does not divide"),
    ("train.micro_batches", 2, "micro-batch of 4 clips does not divide over data x fsdp"),
    ("model.preset", "huge", "config.model.preset: unknown preset"),
    ("model.remat", "sometimes", "config.model: invalid WanConfig"),
    ("pose.phases", ("pretrain", "finetune"), "config.pose.phases: unknown ['finetune']"),
    ("pose.d_backbone", "other", "config.pose.d_backbone: 'other' not in"),
    ("pose.d_layers", (7,), "config.pose.d_layers: (7,) has a block index >= num_layers=4"),
    ("data.kind", "webdataset", "config.data.kind: 'webdataset' not in"),
    ("pose.phases", ("equilibrium",), "config.pose.steps: 3 entries for 1 phases"),
    # Values that used to train and exit 0 with a wrong result.
    ("pose.flow_shift", 0.0, "config.pose.flow_shift: 0.0 must be > 0"),
    ("pose.lam_r1", -1.0, "config.pose.lam_r1: -1.0 must be >= 0"),
    ("pose.cfg_real", -2.0, "config.pose.cfg_real: -2.0 must be >= 0"),
    ("pose.s_lo_end", 1.5, "config.pose.s_lo_end: 1.5 must be in [0, 1)"),
    ("pose.ema_decay", 1.0, "config.pose.ema_decay: 1.0 must be in (0, 1)"),
    ("pose.d_width", 31, "config.pose.d_width: 31 is not divisible by d_heads=2"),
    ("train.log_every", 0, "config.train.log_every: 0 must be >= 1"),
    ("train.max_bad_steps", 0, "config.train.max_bad_steps: 0 must be >= 1"),
    ("ckpt.keep", 0, "config.ckpt.keep: 0 must be >= 1"),
    ("eval.teacher_steps", 0, "config.eval.teacher_steps: 0 must be >= 1"),
    ("data.size", 8, "config.data.size: 8: toy clips need a side of at least 16"),
    ("pose.vsd_t", (0.5, 0.2), "config.pose.vsd_t: (0.5, 0.2) must be (lo, hi) with 0 <= lo"),
    ("pose.cons_t", (0.0, 1.5), "config.pose.cons_t: (0.0, 1.5) must be (lo, hi)"),
    ("pose.cons_t_dist", "beta", "config.pose.cons_t_dist: 'beta' not in"),
    ("pose.d_fake_lo", 1.0, "config.pose.d_fake_lo: 1.0 must be in [0, 1)"),
    ("pose.student_steps", 0, "config.pose.student_steps: 0 must be >= 1"),
    ("pose.logit_std", 0.0, "config.pose.logit_std: 0.0 must be > 0"),
  ],
)
def test_validate_names_the_bad_key(key, value, message):
  config = load_config("toy_i2v", "scratch")
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    config_lib.validate(config, num_devices=8)


def test_extra_fake_updates_need_a_phase_that_trains_the_lora():
  config = load_config("toy_i2v", "scratch")
  config.pose.fake_updates_per_step = 3
  config_lib.validate(config, num_devices=8)  # priming trains the LoRA
  config.pose.phases, config.pose.steps = ("pretrain", "equilibrium"), (2, 2)
  with pytest.raises(config_lib.ConfigError, match="fake_updates_per_step: 3: no phase"):
    config_lib.validate(config, num_devices=8)
  config.pose.joint = True  # DMD2-style: equilibrium trains the LoRA too
  config_lib.validate(config, num_devices=8)


def test_phases_out_of_order_are_refused():
  config = load_config("toy_i2v", "scratch")
  config.pose.phases, config.pose.steps = ("priming", "pretrain"), (2, 2)
  with pytest.raises(config_lib.ConfigError, match=r"config.pose.phases: .* must be in the order"):
    config_lib.validate(config, num_devices=8)
  config.pose.phases = ("pretrain", "pretrain")
  with pytest.raises(config_lib.ConfigError, match="each at most once"):
    config_lib.validate(config, num_devices=8)


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("lr", -1e-3, "config.optim.student.lr: -0.001 must be > 0"),
    ("lr", 0.0, "config.optim.student.lr: 0.0 must be > 0"),
    ("warmup_steps", -1, "config.optim.student.warmup_steps: -1 must be >= 0"),
    ("final_frac", 2.0, "config.optim.student.final_frac: 2.0 must be in [0, 1]"),
    ("b2", 1.0, "config.optim.student.b2: 1.0 must be in [0, 1)"),
    ("decay", "linear", "config.optim.student.decay: 'linear' not in"),
  ],
)
def test_optimizer_values_are_validated(key, value, message):
  config = load_config("toy_i2v", "scratch")
  config.optim.student[key] = value
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    config_lib.validate(config, num_devices=8)
  config = load_config("toy_i2v", "scratch")
  config.optim.lora.lr_by_phase = {"priming": -1.0}
  with pytest.raises(config_lib.ConfigError, match="config.optim.lora.lr_by_phase.priming: -1.0"):
    config_lib.validate(config, num_devices=8)


def test_distillation_without_a_teacher_is_refused(tmp_path):
  config = load_config("toy_i2v", "scratch")
  config.pose.phases, config.pose.steps = ("equilibrium",), (5,)
  with pytest.raises(config_lib.ConfigError, match="config.ckpt.init_from: empty"):
    config_lib.validate(config, num_devices=8)
  config.ckpt.init_from = str(tmp_path / "nope")
  config_lib.validate(config, num_devices=8)  # the values are valid ...
  with pytest.raises(config_lib.ConfigError, match="init_from: .*nope: no such checkpoint"):
    config_lib.check_paths(config)  # ... the path is not (main checks both before any work)
  config.ckpt.init_from = str(tmp_path)
  config_lib.check_paths(config)


def test_wan_i2v_config_is_valid_and_14b():
  for variant, (h, w, shift) in {"480p": (480, 832, 3.0), "720p": (720, 1280, 5.0)}.items():
    config = load_config("wan_i2v", variant)
    config.data.path = "/data/shards"
    config.ckpt.init_from = "gs://bucket/teacher"
    config_lib.validate(config, num_devices=32)  # v5p-64
    assert (config.data.height, config.data.width, config.pose.flow_shift) == (h, w, shift)
    assert config_lib.wan_config(config.model).num_layers == 40
    # The micro-batches are v5p-64's (480p: 2 x 32 clips over fsdp 32; 720p: 4 x 16 over fsdp
    # 16); over 64 chips a micro-batch cannot split without moving data: refused, naming it.
    clips = 64 // config.train.micro_batches
    with pytest.raises(config_lib.ConfigError, match=f"micro-batch of {clips} clips does not"):
      config_lib.validate(config, num_devices=64)
    if variant == "480p":  # v5p-128 at 480p: one micro-batch (the compile table)
      config.train.micro_batches = 1
      config_lib.validate(config, num_devices=64)
  with pytest.raises(ValueError, match="unknown variant"):
    load_config("wan_i2v", "4k")


def test_wan_i2v_layouts_validate_on_their_slices():
  """Each (variant, slice) layout of the compile table is valid on that slice's chips, is what
  ``VARIANT,SLICE`` selects, and differs from the v5p-64 default where the table says so."""
  from configs import wan_i2v
  from pose_jax.aot import topology

  for (variant, slice_), (mesh, micro) in wan_i2v.LAYOUTS.items():
    config = load_config("wan_i2v", f"{variant},{slice_}")
    assert (tuple(config.mesh.shape), config.train.micro_batches) == (mesh, micro)
    config.data.path, config.ckpt.init_from = "/data/shards", "gs://bucket/teacher"
    config_lib.validate(config, num_devices=topology.parse_topology(slice_).devices)
  v6e = load_config("wan_i2v", "480p,v6e-64")
  assert tuple(v6e.mesh.shape) == (1, -1, 4, 1) and v6e.train.micro_batches == 4
  with pytest.raises(ValueError, match="no 480p layout for slice 'v4-8'; compiled for"):
    load_config("wan_i2v", "480p,v4-8")


def test_readme_test_command_is_what_ci_runs():
  readme = pathlib.Path(ROOT, "README.md").read_text()
  blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
  ci = pathlib.Path(ROOT, ".ci", "run").read_text()
  assert len(blocks) >= 2 and blocks[1].strip() in ci


def test_sigterm_during_start_up_exits_0_and_says_so(tmp_path):
  """Before the loop there is nothing to checkpoint: exit at once with status 0 (not 143)."""
  env = dict(os.environ, XLA_FLAGS=xla_flags(4))
  proc = subprocess.Popen(
    [sys.executable, "-m", "pose_jax.main", f"--workdir={tmp_path / 'w'}"],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  for line in proc.stdout:  # the toy data build is the first thing the run prints
    if line.startswith("data: building toy clips"):
      break
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=60)[0]
  assert proc.returncode == 0, out[-2000:]
  assert "preempted (SIGTERM): nothing trained yet" in out, out[-2000:]
  assert not (tmp_path / "w" / "checkpoints" / "1").exists()


def test_readme_fault_table_names_real_tests():
  """Each ``-k`` name in the README's fault table selects at least one test."""
  readme = pathlib.Path(ROOT, "README.md").read_text()
  table = readme.split("## When something goes wrong", 1)[1].split("\n## ", 1)[0]
  names = [
    n for row in table.splitlines()[4:] for n in re.findall(r"`([a-z0-9_]+)`", row.split("|")[-2])
  ]
  tests = "\n".join(p.read_text() for p in pathlib.Path(ROOT, "tests").rglob("test_*.py"))
  defined = re.findall(r"^def (test_\w+)", tests, re.M)
  assert len(names) >= 20
  for name in names:
    assert any(name in d for d in defined), name


def test_the_committed_toy_teacher_fits_the_toy_default():
  # configs/toy_i2v.py starts from assets/toy_teacher: an edit to the toy's model.* without
  # remaking the teacher (bench/README.md, "The toy teacher") must fail here, not mid-run.
  from pose_jax.convert import orbax_io

  config = load_config("toy_i2v")
  config_lib.validate(config, num_devices=8)
  meta = orbax_io.read_meta(config.ckpt.init_from)
  assert meta["wan_config"] == config_lib.wan_config(config.model).to_diffusers()
  assert meta["source"]["bench"] == "toy_teacher", meta["source"]
  assert "pretrain" not in config.pose.phases
  assert load_config("toy_i2v", "scratch").pose.phases[0] == "pretrain"
  with pytest.raises(ValueError, match="toy_i2v.py:bogus"):
    load_config("toy_i2v", "bogus")
