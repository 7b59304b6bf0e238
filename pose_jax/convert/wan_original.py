"""The original Wan2.1 release layout (``wan/modules/model.py``'s ``WanModel``) <-> diffusers names.

Tensors have the same layout in both (torch ``Linear`` ``[out, in]``, ``Conv3d`` ``[D, C, pt, ph,
pw]``, modulation ``[1, 6|2, D]``); only the names differ, so converting is a rename followed by
the diffusers map of :mod:`pose_jax.convert.wan_diffusers`.

  Wan2.1 (module)                diffusers (module)
  patch_embedding                patch_embedding
  text_embedding.{0,2}           condition_embedder.text_embedder.linear_{1,2}
  time_embedding.{0,2}           condition_embedder.time_embedder.linear_{1,2}
  time_projection.1              condition_embedder.time_proj
  img_emb.proj.{0,1,3,4}         condition_embedder.image_embedder.{norm1, ff.net.0.proj,
                                                                   ff.net.2, norm2}
  head.head                      proj_out
  head.modulation (param)        scale_shift_table
  blocks.N.self_attn.{q,k,v,o}   blocks.N.attn1.{to_q,to_k,to_v,to_out.0}   (+ norm_q, norm_k)
  blocks.N.cross_attn.*          blocks.N.attn2.*, with k_img/v_img/norm_k_img ->
                                   add_k_proj/add_v_proj/norm_added_k
  blocks.N.norm3 (affine)        blocks.N.norm2   (the cross-attention norm; Wan's norm2 has no
                                                   weights, so it does not appear)
  blocks.N.ffn.{0,2}             blocks.N.ffn.net.{0.proj,2}
  blocks.N.modulation (param)    blocks.N.scale_shift_table

The release's ``config.json`` (``WanModel``'s registered config) lacks ``patch_size``,
``text_dim`` and ``cross_attn_norm``; they are read from tensor shapes here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pose_jax.models.wan import WanConfig

_TOP = {
  "patch_embedding": "patch_embedding",
  "text_embedding.0": "condition_embedder.text_embedder.linear_1",
  "text_embedding.2": "condition_embedder.text_embedder.linear_2",
  "time_embedding.0": "condition_embedder.time_embedder.linear_1",
  "time_embedding.2": "condition_embedder.time_embedder.linear_2",
  "time_projection.1": "condition_embedder.time_proj",
  "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
  "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
  "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
  "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
  "head.head": "proj_out",
}
_TOP_PARAMS = {"head.modulation": "scale_shift_table"}

_ATTN = {
  "q": "to_q",
  "k": "to_k",
  "v": "to_v",
  "o": "to_out.0",
  "norm_q": "norm_q",
  "norm_k": "norm_k",
  "k_img": "add_k_proj",
  "v_img": "add_v_proj",
  "norm_k_img": "norm_added_k",
}
_BLOCK = {
  **{f"self_attn.{k}": f"attn1.{v}" for k, v in _ATTN.items() if "img" not in k},
  **{f"cross_attn.{k}": f"attn2.{v}" for k, v in _ATTN.items()},
  "norm3": "norm2",
  "ffn.0": "ffn.net.0.proj",
  "ffn.2": "ffn.net.2",
}
_BLOCK_PARAMS = {"modulation": "scale_shift_table"}
_LEAVES = ("weight", "bias")

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _rename(key: str, top, top_params, block, block_params) -> str | None:
  m = _BLOCK_KEY.match(key)
  prefix, rest = (f"blocks.{m.group(1)}.", m.group(2)) if m else ("", key)
  modules, params = (block, block_params) if m else (top, top_params)
  if rest in params:
    return prefix + params[rest]
  module, _, leaf = rest.rpartition(".")
  if leaf in _LEAVES and module in modules:
    return f"{prefix}{modules[module]}.{leaf}"
  return None


def _invert(table: Mapping[str, str]) -> dict[str, str]:
  out = {v: k for k, v in table.items()}
  assert len(out) == len(table), "the rename table must be a bijection"
  return out


_INV = tuple(_invert(t) for t in (_TOP, _TOP_PARAMS, _BLOCK, _BLOCK_PARAMS))


def to_diffusers_key(key: str) -> str | None:
  """Wan2.1 key -> diffusers key; None for a key with no diffusers counterpart."""
  return _rename(key, _TOP, _TOP_PARAMS, _BLOCK, _BLOCK_PARAMS)


def from_diffusers_key(key: str) -> str | None:
  """diffusers key -> Wan2.1 key (inverse of :func:`to_diffusers_key`)."""
  return _rename(key, *_INV)


# --- config ------------------------------------------------------------------------------------
def config_json(cfg: WanConfig) -> dict:
  """The release's ``config.json`` for ``WanModel`` (same keys as the published checkpoints)."""
  return {
    "_class_name": "WanModel",
    "_diffusers_version": "0.30.0",
    "model_type": "i2v" if cfg.is_i2v else "t2v",
    "text_len": 512,
    "in_dim": cfg.in_channels,
    "dim": cfg.dim,
    "ffn_dim": cfg.ffn_dim,
    "freq_dim": cfg.freq_dim,
    "out_dim": cfg.out_channels,
    "num_heads": cfg.num_heads,
    "num_layers": cfg.num_layers,
    "eps": cfg.eps,
  }


def infer_config(
  shapes: Mapping[str, tuple[int, ...]],
  config_json: Mapping | None = None,
  head_dim: int = 128,
  **runtime,
) -> WanConfig:
  """A :class:`WanConfig` from the shapes of a Wan2.1 state dict and its optional ``config.json``.

  Without a ``config.json`` (or one without ``num_heads``) the head count is ``dim // head_dim``
  (128 in every released Wan2.1 model). ``config.json`` values win over shapes where both exist.
  """
  need = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight")
  lost = [k for k in need if k not in shapes]
  if lost:
    raise ValueError(f"cannot infer a Wan config: keys {lost} are absent")
  config_json = dict(config_json or {})
  if config_json.get("model_type", "t2v") not in ("t2v", "i2v"):
    raise ValueError(f"unsupported Wan model_type={config_json['model_type']!r} (only t2v, i2v)")
  dim, in_dim, *patch = shapes["patch_embedding.weight"]
  layers = {int(m.group(1)) for k in shapes if (m := _BLOCK_KEY.match(k))}
  num_layers = max(layers) + 1 if layers else 0
  num_heads = config_json.get("num_heads")
  if not num_heads:
    if dim % head_dim:
      raise ValueError(f"dim {dim} is not a multiple of head_dim {head_dim}: give num_heads")
    num_heads = dim // head_dim
  head = shapes.get("head.head.weight")
  out_dim = head[0] // (patch[0] * patch[1] * patch[2]) if head else in_dim
  image = shapes.get("img_emb.proj.0.weight")
  ffn = shapes.get("blocks.0.ffn.0.weight")
  return WanConfig(
    patch_size=tuple(patch),
    num_heads=num_heads,
    head_dim=config_json.get("dim", dim) // num_heads,
    in_channels=config_json.get("in_dim", in_dim),
    out_channels=config_json.get("out_dim", out_dim),
    text_dim=shapes["text_embedding.0.weight"][1],
    freq_dim=config_json.get("freq_dim", shapes["time_embedding.0.weight"][1]),
    ffn_dim=config_json.get("ffn_dim", ffn[0] if ffn else 4 * dim),
    num_layers=config_json.get("num_layers", num_layers),
    cross_attn_norm="blocks.0.norm3.weight" in shapes,
    eps=config_json.get("eps", 1e-6),
    image_dim=image[0] if image else None,
    **runtime,
  )
