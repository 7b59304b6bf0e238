"""The CLI entry point and config validation."""

import os
import pathlib
import re
import subprocess
import sys

import pytest
from ml_collections import config_flags  # noqa: F401  (loads configs the way main does)

from pose_jax import config as config_lib
from tests.helpers import ROOT
from tests.helpers.tiny import load_config


def _main(*flags):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  return subprocess.run(
    [sys.executable, "-m", "pose_jax.main", *flags],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_main_rejects_misspelt_override_and_bad_values():
  r = _main("--config=configs/toy_i2v.py", "--config.data.frame=9")
  assert r.returncode != 0 and "frame" in r.stderr
  r = _main("--config=configs/toy_i2v.py", "--config.data.frames=8")
  assert r.returncode != 0 and "config.data.frames: 8 is not 1+4k" in r.stderr


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("mesh.shape", (3, 1, 1, 1), "config.mesh.shape: mesh shape"),
    ("train.batch_size", 3, "config.train.batch_size: 3 is not divisible"),
    ("train.micro_batches", 3, "config.train.micro_batches: 3 does not divide"),
    ("model.preset", "huge", "config.model.preset: unknown preset"),
    ("model.remat", "sometimes", "config.model: invalid WanConfig"),
    ("pose.phases", ("pretrain", "finetune"), "config.pose: phases: unknown ['finetune']"),
    ("pose.d_backbone", "other", "config.pose: d_backbone: 'other' not in"),
    ("pose.d_layers", (7,), "config.pose.d_layers: (7,) has a block index >= num_layers=4"),
    ("data.kind", "webdataset", "config.data.kind: 'webdataset' not in"),
    ("pose.phases", ("equilibrium",), "config.pose: steps: 3 entries for 1 phases"),
  ],
)
def test_validate_names_the_bad_key(key, value, message):
  config = load_config("toy_i2v")
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    config_lib.validate(config, num_devices=8)


def test_distillation_without_a_teacher_is_refused():
  config = load_config("toy_i2v")
  config.pose.phases, config.pose.steps = ("equilibrium",), (5,)
  with pytest.raises(config_lib.ConfigError, match="config.ckpt.init_from: empty"):
    config_lib.validate(config, num_devices=8)
  config.ckpt.init_from = "/teachers/wan"
  config_lib.validate(config, num_devices=8)


def test_wan_i2v_config_is_valid_and_14b():
  for variant, (h, w, shift) in {"480p": (480, 832, 3.0), "720p": (720, 1280, 5.0)}.items():
    config = load_config("wan_i2v", variant)
    config.data.path = "/data/shards"
    config.ckpt.init_from = "gs://bucket/teacher"
    config_lib.validate(config, num_devices=64)
    assert (config.data.height, config.data.width, config.pose.flow_shift) == (h, w, shift)
    assert config_lib.wan_config(config.model).num_layers == 40
  with pytest.raises(ValueError, match="unknown variant"):
    load_config("wan_i2v", "4k")


def test_readme_test_command_is_what_ci_runs():
  readme = pathlib.Path(ROOT, "README.md").read_text()
  blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
  ci = pathlib.Path(ROOT, ".ci", "run").read_text()
  assert len(blocks) >= 2 and blocks[1].strip() in ci
