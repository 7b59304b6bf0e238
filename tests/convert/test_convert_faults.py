"""Faults a reliability probe found in ``python -m pose_jax.convert``: ``--overwrite`` replacing
folders the tool never wrote, a failed ``--overwrite`` destroying the previous output, the
"exists" error after a progress bar, and wrong-layout / pipeline-root sources blamed on --config."""

import json
import os
import shutil

import numpy as np
import pytest
import safetensors.numpy

from pose_jax.convert import export, importer, orbax_io
from pose_jax.convert.cli import main
from pose_jax.convert.errors import CheckpointError
from pose_jax.convert.wan_original import from_diffusers_key

WEIGHTS = "diffusion_pytorch_model.safetensors"
REFUSE = "refusing to replace it — choose another --dst or remove it yourself"


def siblings(path) -> list[str]:
  """Everything next to ``path`` but ``path`` itself (temporaries, set-aside old outputs)."""
  return sorted(p for p in os.listdir(path.parent) if p != path.name)


def tree(path) -> dict[str, bytes]:
  return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# --- 1. --overwrite replaces only what the tool wrote ---------------------------------------------
def test_import_overwrite_keeps_a_foreign_folder(src, tmp_path, capsys):
  user = tmp_path / "userdir"
  (user / "sub").mkdir(parents=True)
  (user / "sub" / "thesis.txt").write_text("precious\n")
  (user / "notes.txt").write_text("mine\n")
  assert main(["import", f"--src={src}", f"--dst={user}", "--overwrite", "--noprogress"]) == 1
  err = capsys.readouterr().err
  want = f"error: {user} is not a pose_jax model checkpoint (holds notes.txt, sub/); {REFUSE}"
  assert want in err
  assert (user / "sub" / "thesis.txt").read_text() == "precious\n"
  assert siblings(user) == []


def test_import_overwrite_keeps_a_checkpoint_with_foreign_files(ckpt, src, tmp_path, capsys):
  dst = shutil.copytree(ckpt, tmp_path / "c")
  (dst / "notes.txt").write_text("mine\n")
  assert main(["import", f"--src={src}", f"--dst={dst}", "--overwrite", "--noprogress"]) == 1
  assert "is not a pose_jax model checkpoint (holds" in capsys.readouterr().err
  assert (dst / "notes.txt").read_text() == "mine\n"


def test_export_overwrite_keeps_a_foreign_folder(ckpt, tmp_path, capsys):
  user = tmp_path / "userdir"
  user.mkdir()
  (user / "notes.txt").write_text("mine\n")
  (user / "config.json").write_text("{}")
  args = ["export", f"--src={ckpt}", f"--dst={user}", "--overwrite", "--noprogress"]
  assert main(args) == 1
  err = capsys.readouterr().err
  assert f"error: {user} is not a pose_jax export (holds config.json, notes.txt); {REFUSE}" in err
  assert (user / "notes.txt").read_text() == "mine\n" and (user / "config.json").read_text() == "{}"
  assert siblings(user) == []


@pytest.mark.parametrize("cmd", ["import", "export"])
def test_overwrite_refuses_a_plain_file(cmd, src, ckpt, tmp_path, capsys):
  dst = tmp_path / "file.txt"
  dst.write_text("precious\n")
  source = src if cmd == "import" else ckpt
  assert main([cmd, f"--src={source}", f"--dst={dst}", "--overwrite", "--noprogress"]) == 1
  assert f"error: {dst} is a file, not a pose_jax" in capsys.readouterr().err
  assert dst.read_text() == "precious\n" and siblings(dst) == []


def test_import_overwrite_replaces_a_previous_import(src, tmp_path):
  dst = tmp_path / "c"
  assert main(["import", f"--src={src}", f"--dst={dst}", "--dtype=bf16", "--noprogress"]) == 0
  assert orbax_io.read_meta(dst)["param_dtype"] == "bfloat16"
  assert main(["import", f"--src={src}", f"--dst={dst}", "--overwrite", "--noprogress"]) == 0
  cfg, params = orbax_io.restore_params(str(dst))
  assert cfg.param_dtype == "float32" and params["proj_out"]["kernel"].dtype == np.float32
  assert siblings(dst) == []


def test_export_overwrite_replaces_a_previous_export(ckpt, tmp_path):
  dst = tmp_path / "e"
  args = ["export", f"--src={ckpt}", f"--dst={dst}", "--noprogress"]
  assert main([*args, "--max-shard-size=50KB"]) == 0
  assert f"{WEIGHTS}.index.json" in os.listdir(dst)
  assert main([*args, "--overwrite"]) == 0
  assert sorted(os.listdir(dst)) == ["config.json", WEIGHTS]  # the old shards are gone
  assert siblings(dst) == []


def test_failed_import_overwrite_keeps_the_previous_checkpoint(ckpt, src, tmp_path, failing_read):
  dst = shutil.copytree(ckpt, tmp_path / "c")
  before = tree(dst)
  with pytest.raises(CheckpointError, match="disk on fire"):
    importer.import_checkpoint(str(src), dst, overwrite=True, progress=False)
  assert tree(dst) == before and siblings(dst) == []
  orbax_io.restore_params(str(dst))


def test_failed_export_overwrite_keeps_the_previous_export(ckpt, tmp_path, failing_export):
  dst = tmp_path / "e"
  export.export_checkpoint(str(ckpt), dst, max_shard_bytes=30_000, progress=False)
  before = tree(dst)
  failing_export()
  with pytest.raises(CheckpointError, match="read failed"):
    export.export_checkpoint(str(ckpt), dst, overwrite=True, progress=False)
  assert tree(dst) == before and siblings(dst) == []


# --- 2. the "exists" error: CLI wording, and before any progress bar ------------------------------
@pytest.mark.parametrize("cmd", ["import", "export"])
def test_exists_error_names_the_flag_before_any_progress_bar(cmd, src, ckpt, tmp_path, capfd):
  dst = tmp_path / "out"
  source = src if cmd == "import" else ckpt
  assert main([cmd, f"--src={source}", f"--dst={dst}", "--noprogress"]) == 0
  capfd.readouterr()
  assert main([cmd, f"--src={source}", f"--dst={dst}"]) == 1  # progress bar on
  out, err = capfd.readouterr()
  assert f"error: {dst} exists (pass --overwrite to replace it)" in err
  assert "overwrite=True" not in err
  assert "%|" not in out + err and "it/s" not in out + err and "B/s" not in out + err


# --- 3. a source in the other layout --------------------------------------------------------------
def wan_layout(src, path):
  """The tiny model's weights under Wan2.1 names (same tensors)."""
  path.mkdir()
  tensors = safetensors.numpy.load_file(src / WEIGHTS)
  wan = {from_diffusers_key(k): v for k, v in tensors.items()}
  safetensors.numpy.save_file(wan, path / WEIGHTS)
  shutil.copy(src / "config.json", path / "config.json")
  return path


def test_wan_format_on_a_diffusers_folder_says_so(src, tmp_path, capsys):
  args = ["import", "--format=wan", f"--src={src}", f"--dst={tmp_path / 'c'}", "--noprogress"]
  assert main(args) == 1
  err = capsys.readouterr().err
  assert f"error: {src} looks like a diffusers checkpoint; use --format=diffusers" in err
  assert "--config" not in err
  assert main([*args, "--config=tiny"]) == 1  # the same with the architecture given
  assert "use --format=diffusers" in capsys.readouterr().err
  assert not (tmp_path / "c").exists()


def test_diffusers_format_on_a_wan_folder_says_so(src, tmp_path, capsys):
  wan = wan_layout(src, tmp_path / "w")
  args = ["import", "--format=diffusers", f"--src={wan}", f"--dst={tmp_path / 'c'}", "--noprogress"]
  assert main(args) == 1
  err = capsys.readouterr().err
  assert f"error: {wan} looks like an original Wan2.1 checkpoint; use --format=wan" in err
  assert not (tmp_path / "c").exists()


# --- 4. a diffusers pipeline root as --src --------------------------------------------------------
def test_pipeline_root_names_its_transformer(src, tmp_path, capsys):
  pipe = tmp_path / "pipe"
  shutil.copytree(src, pipe / "transformer")
  (pipe / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "X"]}))
  (pipe / "vae").mkdir()
  assert main(["import", f"--src={pipe}", f"--dst={tmp_path / 'c'}", "--noprogress"]) == 1
  err = capsys.readouterr().err
  hint = f"pass its transformer: --src={pipe}/transformer"
  assert f"error: {pipe} is a diffusers pipeline folder; {hint}" in err
  dst = tmp_path / "c"
  assert main(["import", f"--src={pipe}/transformer", f"--dst={dst}", "--noprogress"]) == 0
