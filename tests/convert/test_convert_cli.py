"""The conversion CLI, its documented errors, atomicity, and streaming memory."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from pose_jax.convert import export, importer, orbax_io
from pose_jax.convert.cli import COMMAND_FLAGS, main
from pose_jax.convert.errors import CheckpointError
from pose_jax.models.wan import preset
from tests.helpers import ROOT

WEIGHTS = "diffusion_pytorch_model.safetensors"


def edited(src, dst, edit):
  shutil.copytree(src, dst)
  tensors = safetensors.numpy.load_file(dst / WEIGHTS)
  edit(tensors)
  safetensors.numpy.save_file(tensors, dst / WEIGHTS)
  return dst


def nothing_at(path) -> bool:
  """No checkpoint and no orbax/export temporaries next to it."""
  leftovers = [p for p in os.listdir(path.parent) if p.startswith((path.name, "." + path.name))]
  return not leftovers


def test_cli_import_export(src, tmp_path, capsys):
  assert main(["import", f"--src={src}", f"--dst={tmp_path / 'c'}", "--dtype=bf16"]) == 0
  assert "import diffusers" in capsys.readouterr().out
  cfg, params = orbax_io.restore_params(str(tmp_path / "c"))
  assert cfg.param_dtype == "bfloat16" and params["proj_out"]["kernel"].dtype == "bfloat16"
  args = ["export", f"--src={tmp_path / 'c'}", f"--dst={tmp_path / 'e'}", "--format=wan"]
  assert main([*args, "--max-shard-size=50KB", "--dtype=fp32"]) == 0
  files = sorted(os.listdir(tmp_path / "e"))
  assert "config.json" in files and f"{WEIGHTS}.index.json" in files and len(files) > 3
  assert json.loads((tmp_path / "e" / "config.json").read_text())["model_type"] == "i2v"
  assert main(args) == 1  # exists
  assert "exists" in capsys.readouterr().err
  assert main(["import", f"--src={src}", f"--dst={tmp_path / 'c'}"]) == 1
  assert main(["import", f"--src={src}", f"--dst={tmp_path / 'c'}", "--overwrite"]) == 0


USAGE_ERRORS = [
  (["import", "--src=s", "--dst=d", "--which=ema"], "--which: only for export, not for import"),
  (["import", "--src=s", "--dst=d", "--max-shard-size=1GB"], "--max_shard_size: only for export"),
  (["export", "--src=s"], "export needs --dst"),
  (["import"], "import needs --src and --dst"),
  (["--src=s", "--dst=d"], "expected a command, import or export"),
  (["convert", "--src=s", "--dst=d"], "expected a command, import or export"),
  (["import", "extra", "--src=s", "--dst=d"], "unexpected arguments: ['extra']"),
  (["export", "--src=s", "--dst=d", "--step=last"], "--step=last: expected N or latest"),
  (["export", "--src=s", "--dst=d", "--max_shard_size=5XB"], "not a size: '5XB'"),
  (["import", "--src=s", "--dst=d", "--format=onnx"], "--format=onnx"),
  (["import", "--src=s", "--dst=d", "--bogus"], "'bogus'"),
]


@pytest.mark.parametrize(("args", "named"), USAGE_ERRORS)
def test_usage_errors_exit_2_naming_the_flag(args, named, capsys):
  assert main(args) == 2
  assert named in capsys.readouterr().err


def test_module_cli_help_and_exit_status(src, tmp_path):
  """``python -m pose_jax.convert``: --help names each flag's commands; usage errors exit 2;
  an import prints one line (no INFO logs)."""

  def cli(*args):
    cmd = [sys.executable, "-m", "pose_jax.convert", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)

  r = cli("--help")
  assert r.returncode == 1 and r.stdout.startswith("Checkpoint conversion CLI"), r.stderr  # absl: 1
  for name in sorted(COMMAND_FLAGS["import"] | COMMAND_FLAGS["export"]):
    used = ", ".join(c for c in ("import", "export") if name in COMMAND_FLAGS[c])
    assert re.search(rf"--(\[no\])?{name}:( <[^>]*>:)? \({used}\) ", r.stdout), name
  for args, named in (USAGE_ERRORS[0], USAGE_ERRORS[2], USAGE_ERRORS[-2]):
    r = cli(*args)
    assert r.returncode == 2 and named in r.stderr, (args, r.stderr)
  r = cli("export", f"--src={tmp_path / 'none'}", f"--dst={tmp_path / 'e'}")
  assert r.returncode == 1 and "error: " in r.stderr and "no such checkpoint" in r.stderr
  r = cli("import", "--format=diffusers", f"--src={src}", f"--dst={tmp_path / 'c'}", "--noprogress")
  assert r.returncode == 0 and r.stdout.startswith("import diffusers: "), r.stderr
  assert not re.search(r"^I\d{4} ", r.stderr, re.M), r.stderr[:2000]


def test_corrupt_or_truncated_file_names_it(src, tmp_path):
  bad = shutil.copytree(src, tmp_path / "s")
  data = (bad / WEIGHTS).read_bytes()
  (bad / WEIGHTS).write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match=f"{WEIGHTS}.*"):
    importer.import_checkpoint(str(bad), tmp_path / "c", progress=False)
  (bad / WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + data[24:])
  with pytest.raises(CheckpointError, match=WEIGHTS):
    importer.import_checkpoint(str(bad), tmp_path / "c", progress=False)
  assert nothing_at(tmp_path / "c")


def test_mismatches_are_all_listed(src, tmp_path):
  def edit(t):
    t.pop("condition_embedder.time_proj.bias")
    t["blocks.0.attn1.to_qq.weight"] = t.pop("blocks.0.attn1.to_q.weight")
    t["blocks.1.ffn.net.2.weight"] = np.ascontiguousarray(t["blocks.1.ffn.net.2.weight"].T)
    t["blocks.0.norm2.weight"] = t["blocks.0.norm2.weight"].astype(np.int32)
    t["blocks.2.norm2.bias"] = t["blocks.0.norm2.bias"]

  bad = edited(src, tmp_path / "s", edit)
  with pytest.raises(CheckpointError) as e:
    importer.import_checkpoint(str(bad), tmp_path / "c", progress=False)
  msg = str(e.value)
  assert "missing (4): [" in msg and "'condition_embedder/time_proj/bias'" in msg
  for lost in (
    "attn1/to_q/kernel layers [0]",
    "norm2/weight layers [0]",
    "ffn/proj_out/kernel layers [1]",
  ):
    assert f"'blocks/{lost}'" in msg
  assert "unexpected (1): ['blocks.0.attn1.to_qq.weight']" in msg
  assert "blocks.1.ffn.net.2.weight: source (64, 32) -> blocks/ffn/proj_out/kernel[layer 1]" in msg
  assert "blocks.2.norm2.bias: layer 2, but the model has 2 layers" in msg
  assert "unsupported dtype (1): ['blocks.0.norm2.weight: I32']" in msg
  assert nothing_at(tmp_path / "c")


def test_failure_midway_leaves_nothing_restorable(src, tmp_path, failing_read):
  with pytest.raises(CheckpointError, match="disk on fire"):
    importer.import_checkpoint(str(src), tmp_path / "c", progress=False)
  assert len(failing_read) == 40 and nothing_at(tmp_path / "c")
  with pytest.raises(CheckpointError):
    orbax_io.restore_params(str(tmp_path / "c"))


def test_killed_import_is_not_taken_for_a_checkpoint(ckpt, tmp_path):
  """What a killed process leaves (orbax's temporary dir, not yet renamed) does not restore."""
  shutil.copytree(ckpt, tmp_path / "c.orbax-checkpoint-tmp-123")
  with pytest.raises(CheckpointError, match="no such checkpoint|not a finished"):
    orbax_io.restore_params(str(tmp_path / "c"))
  (tmp_path / "d").mkdir()  # an empty or foreign directory
  with pytest.raises(CheckpointError, match="not a finished model checkpoint"):
    orbax_io.restore_params(str(tmp_path / "d"))


def test_wan_without_config_needs_the_architecture(src, tmp_path):
  tensors = safetensors.numpy.load_file(src / WEIGHTS)
  from pose_jax.convert.wan_original import from_diffusers_key

  (tmp_path / "w").mkdir()
  wan = {from_diffusers_key(k): v for k, v in tensors.items()}
  safetensors.numpy.save_file(wan, tmp_path / "w" / WEIGHTS)
  with pytest.raises(CheckpointError, match="give num_heads.*--config"):
    importer.import_checkpoint(str(tmp_path / "w"), tmp_path / "c", "wan", progress=False)
  plan = importer.import_checkpoint(
    str(tmp_path / "w"), tmp_path / "c", "wan", config=preset("tiny"), progress=False
  )
  assert plan.cfg == preset("tiny")


def test_export_errors(ckpt, tmp_path, failing_export):
  with pytest.raises(CheckpointError, match="--which/--step apply to train workdirs"):
    export.export_checkpoint(str(ckpt), tmp_path / "e", which="ema", progress=False)
  with pytest.raises(CheckpointError, match="no model checkpoint, train step or finished steps"):
    export.export_checkpoint(str(tmp_path), tmp_path / "e", progress=False)
  with pytest.raises(
    CheckpointError, match=r"wrong shape \(3\).*proj_in/kernel: stored \(2, 32, 64\)"
  ):
    export.export_checkpoint(
      str(ckpt), tmp_path / "e", config=preset("tiny", ffn_dim=32), progress=False
    )
  stored = {p: (s.shape, s.dtype) for p, s in importer.target_specs(preset("tiny")).items()}
  stored["blocks", "attn1", "to_q", "lora_a"] = ((2, 32, 4), np.dtype("float32"))
  with pytest.raises(CheckpointError, match="unexpected.*lora_a.*must be merged first"):
    export.plan_entries(preset("tiny"), stored, "diffusers")
  failing_export()
  with pytest.raises(CheckpointError, match="read failed"):
    export.export_checkpoint(str(ckpt), tmp_path / "e", max_shard_bytes=30_000, progress=False)
  assert nothing_at(tmp_path / "e")


def test_streaming_peak_memory_stays_under_3x_largest_tensor(tmp_path):
  """~0.5 GB synthetic checkpoint (largest tensor 32 MiB, largest stacked param 128 MiB)."""
  spec = importlib.util.spec_from_file_location("convert_speed", f"{ROOT}/bench/convert_speed.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  info = bench.make_synthetic(str(tmp_path / "src"), bench.bench_config("small"))
  largest = info["largest_tensor"]["bytes"]
  assert info["largest_stacked_param"]["bytes"] >= 4 * largest
  for name, a, b in (("import", "src", "ckpt"), ("export", "ckpt", "out")):
    r = bench.run_stage(name, str(tmp_path / a), str(tmp_path / b))
    assert r["growth"] < 3 * largest, (name, r, info)
