"""The student as a LoRA against its teacher: ``convert export --format=lora --rank=R``.

Every trained matrix that a Wan LoRA can carry (:data:`LORA_MODULES`: attention q/k/v/o, the
image keys/values, the FFN, the time/text/image embedders' linears, the output head) becomes
the truncated SVD of ``student - teacher`` at rank ``R`` (``lora_up = U sqrt(S)``,
``lora_down = sqrt(S) V^T``, so ``up @ down`` is the best rank-``R`` approximation in Frobenius
norm); a changed bias of such a module rides along as ``diff_b``. Keys are the original Wan2.1
layout that diffusers' ``WanLoraLoaderMixin.load_lora_weights`` converts and ComfyUI loads:
``diffusion_model.blocks.0.self_attn.q.lora_down.weight`` ``[R, in]``, ``...lora_up.weight``
``[out, R]``, ``...diff_b``; no ``alpha`` keys (the scale is 1, as both loaders assume without
one). What a LoRA cannot hold (the patch-embedding convolution, modulation tables, norms) is
not written: ``lora_report.json`` names each such parameter that changed, with its relative
change, so a user sees what serving with the LoRA loses.

Output ``DIR``: ``pytorch_lora_weights.safetensors`` (the name diffusers looks for in a folder)
and ``lora_report.json``: the rank, and for every rank ``1, 2, 4, ... R`` the relative error
``||delta - approx||_F / ||delta||_F`` over all carried matrices (from the singular values:
one SVD serves every rank), the worst matrix at ``R``, and the parameters not carried.

Tensors stream one at a time from both checkpoints (:mod:`pose_jax.convert.export`'s reader);
a matrix above :data:`FULL_SVD_MAX` on its short side is factorised by a randomized SVD
(oversampled by 16, two power iterations), whose top singular values match the full SVD's to
rounding for the spectra of trained deltas.
"""

from __future__ import annotations

import json
import re

import numpy as np
from etils import epath
from tqdm import tqdm

from pose_jax.convert import destination, export, importer, orbax_io
from pose_jax.convert.errors import CheckpointError

WEIGHTS = "pytorch_lora_weights.safetensors"
REPORT = "lora_report.json"
WHAT = "a pose_jax LoRA export"
PREFIX = "diffusion_model."
FULL_SVD_MAX = 2048
LORA_MODULES = re.compile(
  r"blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.([qkvo]|k_img|v_img)|ffn\.[02])"
  r"|time_projection\.1|head\.head|(text|time)_embedding\.[02]|img_emb\.proj\.[13]"
)
_DTYPES = {None: "F32", "fp32": "F32", "bf16": "BF16"}  # --dtype -> safetensors dtype


def is_lora_export(path) -> bool:
  path = epath.Path(path)
  return path.is_dir() and {p.name for p in path.iterdir()} == {WEIGHTS, REPORT}


def top_svd(delta: np.ndarray, rank: int, seed: int = 0):
  """``(U [m, k], S [k], Vt [k, n])``, ``k = min(rank, m, n)``: the top singular triplets."""
  m, n = delta.shape
  k = min(rank, m, n)
  if min(m, n) <= FULL_SVD_MAX:
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return u[:, :k], s[:k], vt[:k]
  rng = np.random.default_rng(seed)
  y = delta @ rng.standard_normal((n, min(k + 16, n)), dtype=delta.dtype)
  for _ in range(2):  # power iterations, re-orthonormalised
    q, _ = np.linalg.qr(y)
    q, _ = np.linalg.qr(delta.T @ q)
    y = delta @ q
  q, _ = np.linalg.qr(y)
  u, s, vt = np.linalg.svd(q.T @ delta, full_matrices=False)
  return (q @ u)[:, :k], s[:k], vt[:k]


def _module(key: str) -> tuple[str, str] | None:
  """Wan key -> (module, 'weight' | 'bias') when a LoRA can carry it, else None."""
  stem, _, leaf = key.rpartition(".")
  return (stem, leaf) if LORA_MODULES.fullmatch(stem) and leaf in ("weight", "bias") else None


def _ranks(rank: int) -> list[int]:
  return sorted({min(2**i, rank) for i in range(rank.bit_length() + 1)})


def _base_of(meta: dict | None, src: str) -> str:
  """The teacher a train workdir distilled (its run config's ``ckpt.init_from``)."""
  base = ((meta or {}).get("config") or {}).get("ckpt", {}).get("init_from", "")
  if not base:
    raise CheckpointError(
      f"{src}: the run names no teacher (ckpt.init_from); pass --base=TEACHER_CHECKPOINT"
    )
  return base


def export_lora(
  src: str,
  dst: str,
  rank: int,
  *,
  base: str | None = None,
  step=None,
  which: str | None = None,
  dtype: str | None = None,
  overwrite: bool = False,
  progress: bool = True,
) -> dict:
  """Writes the LoRA of ``src`` (a train workdir, step or model checkpoint) against ``base``
  (a model checkpoint; default: the run's ``ckpt.init_from``) into ``dst/``; returns the
  report."""
  if rank < 1:
    raise ValueError(f"--rank={rank}: must be >= 1")
  if dtype not in _DTYPES:
    raise ValueError(f"unknown LoRA dtype {dtype!r} (bf16 or fp32)")
  dst = epath.Path(dst)
  destination.check(dst, overwrite, is_lora_export, WHAT)
  item, prefix, meta = export.resolve_source(src, step, which)
  base = base or _base_of(meta, src)  # a train step's meta holds its run config
  base_item, base_prefix, base_meta = export.resolve_source(base)
  if meta is None or base_meta is None:
    raise CheckpointError(f"{item if meta is None else base_item}: no wan_config to read")
  cfg, base_cfg = orbax_io.config_from_meta(meta), orbax_io.config_from_meta(base_meta)
  if cfg.to_diffusers() != base_cfg.to_diffusers():
    raise CheckpointError(f"{src} and the base {base} are different architectures")
  readers = [orbax_io.ParamReader(i, p) for i, p in ((item, prefix), (base_item, base_prefix))]
  plans = [export.plan_entries(cfg, r.specs, "wan", "fp32") for r in readers]
  out_dtype = importer.ST_DTYPES[_DTYPES[dtype]]
  tensors, not_carried, kept = {}, {}, {}
  energy = {"delta": 0.0, "kept": {r: 0.0 for r in _ranks(rank)}}
  worst = (0.0, "")
  arrays = zip(*(export.torch_arrays(r, plan, cfg) for r, plan in zip(readers, plans)))
  for entry, (new, old) in tqdm(
    zip(plans[0], arrays), total=len(plans[0]), desc="export lora", disable=not progress
  ):
    delta = new.astype(np.float64) - old
    if not delta.any():
      continue
    module = _module(entry.key)
    if module is None or (module[1] == "weight" and delta.ndim != 2):
      not_carried[entry.key] = float(np.linalg.norm(delta) / max(np.linalg.norm(old), 1e-30))
      continue
    stem, leaf = module
    if leaf == "bias":
      kept[stem] = delta
      continue
    u, s, vt = top_svd(delta, rank)
    total = float(np.sum(delta**2))
    energy["delta"] += total
    for r in energy["kept"]:
      energy["kept"][r] += float(np.sum(s[:r] ** 2))
    rel = np.sqrt(max(total - float(np.sum(s**2)), 0.0) / total)
    worst = max(worst, (float(rel), stem))
    root = np.sqrt(s)
    tensors[f"{PREFIX}{stem}.lora_up.weight"] = (u * root).astype(out_dtype)
    tensors[f"{PREFIX}{stem}.lora_down.weight"] = (root[:, None] * vt).astype(out_dtype)
  for stem, delta in kept.items():  # a bias rides along only where its matrix has a LoRA
    if f"{PREFIX}{stem}.lora_up.weight" in tensors:
      tensors[f"{PREFIX}{stem}.diff_b"] = delta.astype(out_dtype)
    else:
      not_carried[f"{stem}.bias"] = float(np.linalg.norm(delta))
  if not tensors:
    raise CheckpointError(f"{src} equals the base {base} in every matrix a LoRA carries")
  delta_energy = max(energy["delta"], 1e-300)
  report = {
    "src": str(src),
    "base": str(base),
    "rank": rank,
    "matrices": sum(k.endswith("lora_up.weight") for k in tensors),
    "relative_error_by_rank": {
      str(r): float(np.sqrt(max(delta_energy - e, 0.0) / delta_energy))
      for r, e in energy["kept"].items()
    },
    "worst_matrix_at_rank": {"module": worst[1], "relative_error": worst[0]},
    "not_carried": dict(sorted(not_carried.items())),
  }
  tmp = destination.temporary_sibling(dst, "lora-tmp")
  tmp.rmtree(missing_ok=True)
  tmp.mkdir(parents=True)
  entries = [export.Entry(k, (), None, a.shape, a.dtype) for k, a in tensors.items()]
  try:
    export.write_safetensors(tmp / WEIGHTS, entries, iter(tensors.values()), lambda n: None)
    (tmp / REPORT).write_text(json.dumps(report, indent=2))
    destination.install(tmp, dst, overwrite, is_lora_export, WHAT)
  except BaseException:
    tmp.rmtree(missing_ok=True)
    raise
  return report
