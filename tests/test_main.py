"""The CLI entry point and config validation."""

import os
import re
import subprocess
import sys

import pytest
from ml_collections import config_flags  # noqa: F401  (loads configs the way main does)

from pose_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name, arg=None):
  import importlib.util

  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


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


def test_main_runs_toy_default_on_a_4_device_mesh():
  r = _main(
    "--config=configs/toy_i2v.py", "--config.mesh.shape=(2,2,1,1)", "--config.sample.batch=4"
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "mesh {'data': 2, 'fsdp': 2, 'context': 1, 'tensor': 1}" in r.stdout
  assert re.search(r"latent \(4, 3, 8, 12, 16\) for video \(4, 9, 64, 96, 3\)", r.stdout)
  assert re.search(r"one-step DiT forward [\d.]+ ms", r.stdout)


def test_main_rejects_misspelt_override_and_bad_values():
  r = _main("--config=configs/toy_i2v.py", "--config.sample.frame=9")
  assert r.returncode != 0 and "frame" in r.stderr
  r = _main("--config=configs/toy_i2v.py", "--config.sample.frames=8")
  assert r.returncode != 0 and "config.sample.frames: 8 is not 1+4k" in r.stderr


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("mesh.shape", (3, 1, 1, 1), "config.mesh.shape: mesh shape"),
    ("sample.height", 60, "config.sample.height: 60 must be a positive multiple of 16"),
    ("sample.batch", 3, "config.sample.batch: 3 is not divisible"),
    ("model.preset", "huge", "config.model.preset: unknown preset"),
    ("model.remat", "sometimes", "config.model: invalid WanConfig"),
  ],
)
def test_validate_names_the_bad_key(key, value, message):
  config = _load("toy_i2v")
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    config_lib.validate(config, num_devices=8)


def test_wan_i2v_config_is_valid_and_14b():
  for variant, (h, w) in {"480p": (480, 832), "720p": (720, 1280)}.items():
    config = _load("wan_i2v", variant)
    config_lib.validate(config, num_devices=64)
    assert (config.sample.height, config.sample.width) == (h, w)
    assert config_lib.latent_shape(config.sample, config_lib.wan_config(config.model)) == (
      21,
      h // 8,
      w // 8,
    )
  with pytest.raises(ValueError, match="unknown variant"):
    _load("wan_i2v", "4k")


def test_readme_test_command_is_what_ci_runs():
  readme = open(os.path.join(ROOT, "README.md")).read()
  blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
  ci = open(os.path.join(ROOT, ".ci", "run")).read()
  assert len(blocks) >= 2 and blocks[1].strip() in ci
