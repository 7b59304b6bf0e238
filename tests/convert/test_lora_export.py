"""``convert export --format=lora``: the student minus its teacher as a Wan LoRA, loaded into a
tiny diffusers I2V pipeline by its own ``load_lora_weights``, against the full student."""

import copy
import json

import numpy as np
import pytest
import torch

from pose_jax.convert import cli, importer, lora
from pose_jax.models.wan import preset
from tests.helpers.numerics import rel_err
from tests.helpers.tiny import tiny_pipeline
from tests.helpers.torch_refs import inputs, torch_wan, torch_wan_forward

CFG = preset("tiny")


def _student(teacher, rank: int, seed: int, modulation: bool = False):
  """``teacher`` with a rank-``rank`` change to every Linear weight and a change to its bias
  (and, with ``modulation``, to block 0's modulation table, which no LoRA carries)."""
  student = copy.deepcopy(teacher)
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in student.modules():
      if isinstance(m, torch.nn.Linear):
        out, inn = m.weight.shape
        m.weight.add_(torch.randn(out, rank, generator=g) @ torch.randn(rank, inn, generator=g) / 8)
        if m.bias is not None:
          m.bias.add_(0.1 * torch.randn(out, generator=g))
    if modulation:
      student.blocks[0].scale_shift_table.add_(0.2)
  return student


def _checkpoint(model, root, name):
  model.save_pretrained(root / f"{name}_diffusers")
  importer.import_checkpoint(str(root / f"{name}_diffusers"), root / name, progress=False)
  return root / name


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("lora")
  teacher = torch_wan(CFG, seed=7)
  student = _student(teacher, rank=2, seed=1)
  shifted = _student(teacher, rank=2, seed=1, modulation=True)
  paths = {n: _checkpoint(m, root, n) for n, m in [("t", teacher), ("s", student), ("m", shifted)]}
  return root, paths, {"t": teacher, "s": student, "m": shifted}


def _export(root, src, base, rank, name):
  dst = root / name
  args = ["export", "--format=lora", f"--src={src}", f"--base={base}", f"--rank={rank}"]
  assert cli.main([*args, f"--dst={dst}", "--noprogress"]) == 0
  return dst, json.loads((dst / lora.REPORT).read_text())


def _served(teacher, folder):
  """The teacher in a tiny diffusers pipeline with the LoRA loaded by ``load_lora_weights``."""
  pipe = tiny_pipeline()
  pipe.transformer = copy.deepcopy(teacher)
  pipe.load_lora_weights(str(folder))
  return pipe.transformer


def test_the_lora_in_diffusers_equals_the_student_from_the_delta_rank_up(models):
  root, paths, m = models
  inp = inputs(CFG)
  want, _ = torch_wan_forward(m["s"], inp, pad_text_to=512)
  teacher_out, _ = torch_wan_forward(m["t"], inp, pad_text_to=512)
  errors = {}
  for rank in (1, 2, 4):
    folder, report = _export(root, paths["s"], paths["t"], rank, f"r{rank}")
    got, _ = torch_wan_forward(_served(m["t"], folder), inp, pad_text_to=512)
    errors[rank] = rel_err(got, want)
    assert report["rank"] == rank and report["not_carried"] == {}, report
  # Every changed matrix is rank 2: rank 1 misses part of it, ranks 2 and 4 hold all of it.
  assert errors[2] < 1e-5 and errors[4] < 1e-5, errors
  assert errors[1] > 100 * errors[2] and rel_err(teacher_out, want) > errors[1], errors
  by_rank = report["relative_error_by_rank"]
  assert set(by_rank) == {"1", "2", "4"} and by_rank["1"] > 0.1 and by_rank["2"] < 1e-6, by_rank
  # A matrix for each of: 2 blocks x (4 self + 4 cross + 2 image + 2 FFN), time embedder (2),
  # time projection, text embedder (2), image embedder (2), output head.
  assert report["matrices"] == 2 * 12 + 8, report["matrices"]


def test_what_no_lora_carries_is_named_not_silently_dropped(models):
  root, paths, m = models
  _, report = _export(root, paths["m"], paths["t"], 2, "mod")
  assert list(report["not_carried"]) == ["blocks.0.modulation"], report["not_carried"]
  assert report["not_carried"]["blocks.0.modulation"] > 0


def test_the_lora_is_in_wan_keys_with_up_down_shapes(models):
  from safetensors.numpy import load_file

  root, paths, _ = models
  folder, _ = _export(root, paths["s"], paths["t"], 2, "keys")
  tensors = load_file(str(folder / lora.WEIGHTS))
  q = "diffusion_model.blocks.0.self_attn.q"
  assert tensors[f"{q}.lora_up.weight"].shape == (CFG.num_heads * CFG.head_dim, 2)
  assert tensors[f"{q}.lora_down.weight"].shape == (2, CFG.num_heads * CFG.head_dim)
  assert f"{q}.diff_b" in tensors and not [k for k in tensors if k.endswith(".alpha")]
  assert all(k.startswith("diffusion_model.") for k in tensors)


def test_bad_lora_requests_are_refused(models, capsys):
  root, paths, _ = models
  base = ["export", f"--src={paths['s']}", f"--dst={root / 'x'}"]
  assert cli.main([*base, "--format=lora", f"--base={paths['t']}", "--rank=0"]) == 1
  assert "--rank=0: must be >= 1" in capsys.readouterr().err
  assert cli.main([*base, "--format=lora"]) == 1  # a model checkpoint names no teacher
  assert "pass --base=TEACHER_CHECKPOINT" in capsys.readouterr().err
  assert cli.main([*base, "--rank=4"]) == 2  # diffusers export: --rank means nothing
  assert "--rank: only with --format=lora" in capsys.readouterr().err
  assert cli.main(["import", "--format=lora", f"--src={root}", f"--dst={root / 'y'}"]) == 2
  assert cli.main([*base, "--format=lora", f"--base={paths['s']}"]) == 1  # itself: no delta
  assert "equals the base" in capsys.readouterr().err
  assert not (root / "x").exists()


def test_randomized_svd_matches_the_full_one_on_a_low_rank_plus_noise_matrix():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((300, 8)) @ rng.standard_normal((8, 260)) * 3
  a += 0.01 * rng.standard_normal(a.shape)
  full = np.linalg.svd(a, compute_uv=False)[:8]
  old, lora.FULL_SVD_MAX = lora.FULL_SVD_MAX, 100
  try:
    u, s, vt = lora.top_svd(a, 8)
  finally:
    lora.FULL_SVD_MAX = old
  np.testing.assert_allclose(s, full, rtol=1e-6)
  np.testing.assert_allclose(u.T @ u, np.eye(8), atol=1e-8)
  best = np.linalg.norm(a - (u * s) @ vt) / np.linalg.norm(a)
  assert best < 0.01
