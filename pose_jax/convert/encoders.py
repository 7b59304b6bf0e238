"""Checkpoints -> :class:`CLIPVisionEncoder` / :class:`UMT5Encoder` parameters (strict).

Legend: D width, C image channels, P patch size, L positions (1 + patches), i layer index.
Models are built abstractly (``nnx.eval_shape``) and filled from numpy buffers, so no random
initialisation is ever materialised; with ``mesh=`` every array is placed straight into the
sharding of its logical axes (:func:`pose_jax.sharding.state_shardings`).

transformers layout (``config.json`` + ``model.safetensors`` or its sharded index):
  CLIPVisionModel: keys with a ``vision_model.`` prefix (hub files, transformers 4, and
    transformers 5's CLIPVisionModelWithProjection) or without it (transformers 5 saves
    CLIPVisionModel so); both spellings of one key in a file is an error. Ours, except
    ``embeddings.patch_embedding.weight [D,C,P,P]`` -> ``patch_embedding.kernel [P*P*C, D]``
    ``embeddings.class_embedding`` / ``embeddings.position_embedding.weight`` -> ``class_embedding``
    / ``position_embedding``;  ``encoder.layers.{i}.X`` -> ``layers.X`` at index i
    skipped on purpose: ``visual_projection.weight`` (CLIPVisionModelWithProjection checkpoints,
    as in the Wan-AI ``*-Diffusers`` image_encoder) and the old ``embeddings.position_ids`` buffer.
  UMT5EncoderModel: ``shared.weight`` -> ``shared`` (``encoder.embed_tokens.weight`` is its tied
    duplicate: checked equal, or used when ``shared.weight`` is absent);
    ``encoder.block.{i}.layer.0.layer_norm`` -> ``blocks.attn_norm``,
    ``encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o,relative_attention_bias}`` ->
    ``blocks.attn.*``,
    ``encoder.block.{i}.layer.1.layer_norm`` -> ``blocks.ffn_norm``,
    ``encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1,wo}`` -> ``blocks.ffn.*``,
    ``encoder.final_layer_norm`` -> ``final_layer_norm``.
Original Wan2.1 release files (torch pickles, read with ``torch.load(weights_only=True)``):
  ``models_t5_umt5-xxl-enc-bf16.pth`` (``wan/modules/t5.py`` T5Encoder): ``token_embedding``,
    ``blocks.{i}.{norm1, attn.{q,k,v,o}, pos_embedding.embedding, norm2, ffn.gate.0 (wi_0),
    ffn.fc1 (wi_1), ffn.fc2 (wo)}``, ``norm``.
  ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (``wan/modules/clip.py``
    XLMRobertaCLIP): ``visual.{patch_embedding, cls_embedding [1,1,D], pos_embedding [1,L,D],
    pre_norm, post_norm, transformer.{i}.{norm1, attn.to_qkv ([q;k;v] rows), attn.proj, norm2,
    mlp.0, mlp.2}}``; skipped on purpose: ``visual.head`` (projection), ``textual.*`` and
    ``log_scale``.
Linear weights ``[out, in]`` are transposed to kernels ``[in, out]``. Any other key, a missing
parameter or a wrong shape raises :class:`CheckpointError` listing all of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from pose_jax import sharding as shd
from pose_jax.convert import strict
from pose_jax.convert.errors import CheckpointError
from pose_jax.convert.safetensors_io import SafetensorsReader, read_config
from pose_jax.models.encoders import clip_vision, umt5
from pose_jax.models.encoders.clip_vision import CLIPVisionConfig, CLIPVisionEncoder
from pose_jax.models.encoders.umt5 import UMT5Config, UMT5Encoder
from pose_jax.paths import GCSFUSE, local_only

Items = Iterable[tuple[str, np.ndarray]]
Target = strict.Target


@strict.transform(lambda s: (s[2] * s[3] * s[1], s[0]) if len(s) == 4 else None)
def _conv_to_dense(w: np.ndarray) -> np.ndarray:
  """Conv2d ``[D, C, P, P]`` -> ``[P*P*C, D]`` matching ``(ph pw c)`` patch flattening."""
  d, c, ph, pw = w.shape
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(ph * pw * c, d))


@strict.transform(lambda s: s[2:] if len(s) == 3 and s[:2] == (1, 1) else s)
def _wan_cls(w: np.ndarray) -> np.ndarray:
  """Wan's class embedding ``[1, 1, D]`` -> ``[D]`` (other shapes are left for strict to report)."""
  return w[0, 0] if w.ndim == 3 and w.shape[:2] == (1, 1) else w


@strict.transform(lambda s: s[1:] if len(s) == 3 and s[0] == 1 else s)
def _wan_pos(w: np.ndarray) -> np.ndarray:
  """Wan's position embedding ``[1, L, D]`` -> ``[L, D]``."""
  return w[0] if w.ndim == 3 and w.shape[0] == 1 else w


def _param(module: tuple[str, ...], leaf: str, layer: int | None) -> Target:
  if leaf == "weight" and module and "norm" not in module[-1]:
    return Target((*module, "kernel"), layer, strict.LINEAR)
  return Target((*module, leaf), layer)


# --- CLIP vision --------------------------------------------------------------------------------
_HF_CLIP_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_HF_CLIP_SKIP = ("visual_projection.weight", "embeddings.position_ids")
_HF_CLIP_TOP = {
  "embeddings.class_embedding": Target(("class_embedding",), None),
  "embeddings.position_embedding.weight": Target(("position_embedding",), None),
  "embeddings.patch_embedding.weight": Target(("patch_embedding", "kernel"), None, _conv_to_dense),
}


def clip_hf_key(key: str) -> Target | None:
  """transformers ``CLIPVisionModel`` key (``vision_model.`` prefix removed) -> target."""
  if key in _HF_CLIP_TOP:
    return _HF_CLIP_TOP[key]
  m = _HF_CLIP_LAYER.match(key)
  if m:
    return _param(("layers", *m.group(2).split(".")), m.group(3), int(m.group(1)))
  m = re.match(r"^(pre_layrnorm|post_layernorm)\.(weight|bias)$", key)
  return Target(m.groups(), None) if m else None


def _clip_hf_items(reader: SafetensorsReader) -> Iterator[tuple[str, np.ndarray]]:
  """Tensors with the optional ``vision_model.`` prefix removed; known extras skipped."""
  seen = {}
  for key in reader.keys():
    short = key.removeprefix("vision_model.")
    if short in seen:
      raise CheckpointError(f"{reader.file_of(key)}: both {seen[short]!r} and {key!r} present")
    seen[short] = key
    if short not in _HF_CLIP_SKIP:
      yield short, reader.get(key)


_WAN_CLIP_LAYER = re.compile(r"^visual\.transformer\.(\d+)\.(.+)\.(weight|bias)$")
_WAN_CLIP_RENAME = {
  "norm1": "layer_norm1",
  "norm2": "layer_norm2",
  "attn.proj": "self_attn.out_proj",
  "mlp.0": "mlp.fc1",
  "mlp.2": "mlp.fc2",
  "attn.to_qkv#q": "self_attn.q_proj",
  "attn.to_qkv#k": "self_attn.k_proj",
  "attn.to_qkv#v": "self_attn.v_proj",
}
_WAN_CLIP_TOP = {
  "visual.cls_embedding": Target(("class_embedding",), None, _wan_cls),
  "visual.pos_embedding": Target(("position_embedding",), None, _wan_pos),
  "visual.patch_embedding.weight": Target(("patch_embedding", "kernel"), None, _conv_to_dense),
  "visual.pre_norm.weight": Target(("pre_layrnorm", "weight"), None),
  "visual.pre_norm.bias": Target(("pre_layrnorm", "bias"), None),
  "visual.post_norm.weight": Target(("post_layernorm", "weight"), None),
  "visual.post_norm.bias": Target(("post_layernorm", "bias"), None),
}


def _wan_clip_skip(key: str) -> bool:
  return key in ("visual.head", "log_scale") or key.startswith("textual.")


def clip_wan_key(key: str) -> Target | None:
  """Wan ``XLMRobertaCLIP`` key (``to_qkv`` already split into ``#q/#k/#v``) -> target."""
  if key in _WAN_CLIP_TOP:
    return _WAN_CLIP_TOP[key]
  key = re.sub(r"\.to_qkv\.(weight|bias)#([qkv])$", r".to_qkv#\2.\1", key)
  m = _WAN_CLIP_LAYER.match(key)
  if m and m.group(2) in _WAN_CLIP_RENAME:
    return _param(("layers", *_WAN_CLIP_RENAME[m.group(2)].split(".")), m.group(3), int(m.group(1)))
  return None


def _split_qkv(items: Items) -> Iterator[tuple[str, np.ndarray]]:
  """``...attn.to_qkv.{weight,bias}`` rows [q; k; v] -> three keys ``...#q``, ``#k``, ``#v``."""
  for key, value in items:
    if ".attn.to_qkv." in key:
      if value.shape[0] % 3:
        raise CheckpointError(f"{key}: first dim {value.shape[0]} is not 3 x width")
      for name, part in zip("qkv", np.split(value, 3, axis=0)):
        yield f"{key}#{name}", part
    else:
      yield key, value


# --- UMT5 ---------------------------------------------------------------------------------------
_HF_T5_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.layer\.([01])\.(.+)\.weight$")
_HF_T5_RENAME = {
  ("0", "layer_norm"): ("attn_norm",),
  ("1", "layer_norm"): ("ffn_norm",),
  ("0", "SelfAttention.q"): ("attn", "q"),
  ("0", "SelfAttention.k"): ("attn", "k"),
  ("0", "SelfAttention.v"): ("attn", "v"),
  ("0", "SelfAttention.o"): ("attn", "o"),
  ("1", "DenseReluDense.wi_0"): ("ffn", "wi_0"),
  ("1", "DenseReluDense.wi_1"): ("ffn", "wi_1"),
  ("1", "DenseReluDense.wo"): ("ffn", "wo"),
}
_TIED = "encoder.embed_tokens.weight"


def umt5_hf_key(key: str) -> Target | None:
  """transformers ``UMT5EncoderModel`` key -> target (None: no such parameter)."""
  if key == "shared.weight":
    return Target(("shared",), None)
  if key == "encoder.final_layer_norm.weight":
    return Target(("final_layer_norm", "weight"), None)
  m = _HF_T5_BLOCK.match(key)
  if not m:
    return None
  layer, sub, name = int(m.group(1)), m.group(2), m.group(3)
  if (sub, name) == ("0", "SelfAttention.relative_attention_bias"):
    return Target(("blocks", "attn", "relative_attention_bias"), layer)
  if (sub, name) in _HF_T5_RENAME:
    return _param(("blocks", *_HF_T5_RENAME[(sub, name)]), "weight", layer)
  return None


_WAN_T5_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)\.weight$")
_WAN_T5_RENAME = {
  "norm1": ("attn_norm",),
  "norm2": ("ffn_norm",),
  "attn.q": ("attn", "q"),
  "attn.k": ("attn", "k"),
  "attn.v": ("attn", "v"),
  "attn.o": ("attn", "o"),
  "ffn.gate.0": ("ffn", "wi_0"),
  "ffn.fc1": ("ffn", "wi_1"),
  "ffn.fc2": ("ffn", "wo"),
}


def umt5_wan_key(key: str) -> Target | None:
  """Wan ``T5Encoder`` key -> target (None: no such parameter)."""
  if key == "token_embedding.weight":
    return Target(("shared",), None)
  if key == "norm.weight":
    return Target(("final_layer_norm", "weight"), None)
  m = _WAN_T5_BLOCK.match(key)
  if not m:
    return None
  layer, name = int(m.group(1)), m.group(2)
  if name == "pos_embedding.embedding":
    return Target(("blocks", "attn", "relative_attention_bias"), layer)
  if name in _WAN_T5_RENAME:
    return _param(("blocks", *_WAN_T5_RENAME[name]), "weight", layer)
  return None


def _umt5_hf_items(reader: SafetensorsReader) -> Iterator[tuple[str, np.ndarray]]:
  """All tensors; the tied ``encoder.embed_tokens.weight`` is checked against ``shared.weight``
  (or stands in for it when that is absent)."""
  keys = reader.keys()
  if "shared.weight" not in keys:
    for key in keys:
      yield ("shared.weight" if key == _TIED else key), reader.get(key)
    return
  shared = None
  for key in keys:
    if key != _TIED:
      value = reader.get(key)
      shared = value if key == "shared.weight" else shared
      yield key, value
  if _TIED in keys and not np.array_equal(reader.get(_TIED), shared):
    raise CheckpointError(
      f"{reader.file_of(_TIED)}: {_TIED} differs from shared.weight "
      "(UMT5 ties them; this checkpoint is not a UMT5EncoderModel)"
    )


# --- shared machinery ---------------------------------------------------------------------------
def _build(
  make: Callable[[], nnx.Module],
  items: Items,
  key_map,
  stacked: str,
  mesh: Mesh | None,
):
  """Fills an abstractly built model from ``items`` (parameters under ``stacked`` have a leading
  layer axis); arrays go to ``mesh`` shardings if given."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  targets = strict.flat_shapes(state, nnx.Param)
  buffers = strict.fill(items, targets, key_map, stacked=stacked)
  shardings = None
  if mesh is not None:
    shardings = {
      tuple(str(k) for k in p): s for p, s in nnx.to_flat_state(shd.state_shardings(state, mesh))
    }
  for path, var in nnx.to_flat_state(state):
    p = tuple(str(k) for k in path)
    if p not in buffers:  # a non-parameter variable: strict.flat_shapes covers every Param
      raise CheckpointError(f"{'/'.join(p)}: not a parameter; cannot be loaded")
    arr = buffers.pop(p)
    if shardings is None:
      var.set_value(jnp.asarray(arr))
    else:
      sharding = shardings[p]
      var.set_value(
        jax.device_put(arr, sharding.get_value() if hasattr(sharding, "get_value") else sharding)
      )
  return nnx.merge(graphdef, state)


def _torch_items(path: str) -> Iterator[tuple[str, np.ndarray]]:
  """A torch state-dict pickle, tensor by tensor as float32/int numpy (torch imported here)."""
  import torch

  local_only(path, "torch checkpoint", "torch.load reads local files", f"copy it or {GCSFUSE}")
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such file (expected a Wan2.1 .pth checkpoint)")
  try:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except Exception as e:  # legacy (non-zip) pickles cannot be memory-mapped
    try:
      state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e2:
      raise CheckpointError(f"{path}: cannot read torch checkpoint ({e2}; mmap: {e})") from e2
  if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
    raise CheckpointError(f"{path}: not a flat state dict of tensors")
  for key in list(state):
    t = state.pop(key)
    yield key, (t.float() if t.is_floating_point() else t).numpy()


# --- public API ---------------------------------------------------------------------------------
def load_clip_vision(path: str, *, mesh: Mesh | None = None, **runtime) -> CLIPVisionEncoder:
  """A transformers CLIP vision checkpoint dir -> :class:`CLIPVisionEncoder`.

  ``runtime`` overrides run settings of :class:`CLIPVisionConfig` (dtype, remat).
  """
  cfg = CLIPVisionConfig.from_hf(read_config(path), **runtime)
  reader = SafetensorsReader(path, prefix="model")
  return _build(
    lambda: CLIPVisionEncoder(cfg, rngs=nnx.Rngs(0)),
    _clip_hf_items(reader),
    clip_hf_key,
    "layers",
    mesh,
  )


def load_umt5(path: str, *, mesh: Mesh | None = None, **runtime) -> UMT5Encoder:
  """A transformers ``UMT5EncoderModel`` checkpoint dir -> :class:`UMT5Encoder`."""
  cfg = UMT5Config.from_hf(read_config(path), **runtime)
  reader = SafetensorsReader(path, prefix="model")
  return _build(
    lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0)),
    _umt5_hf_items(reader),
    umt5_hf_key,
    "blocks",
    mesh,
  )


def load_clip_vision_wan(
  path: str, config: CLIPVisionConfig | None = None, *, mesh: Mesh | None = None, **runtime
) -> CLIPVisionEncoder:
  """Wan2.1's ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` -> vision tower.

  ``config`` defaults to the ``vit_h_14`` preset (the .pth carries no config).
  """
  cfg = (config or clip_vision.PRESETS["vit_h_14"]).replace(**runtime)
  items = _split_qkv((k, v) for k, v in _torch_items(path) if not _wan_clip_skip(k))
  return _build(
    lambda: CLIPVisionEncoder(cfg, rngs=nnx.Rngs(0)),
    items,
    clip_wan_key,
    "layers",
    mesh,
  )


def load_umt5_wan(
  path: str, config: UMT5Config | None = None, *, mesh: Mesh | None = None, **runtime
) -> UMT5Encoder:
  """Wan2.1's ``models_t5_umt5-xxl-enc-bf16.pth`` -> :class:`UMT5Encoder`.

  ``config`` defaults to the ``umt5_xxl`` preset (the .pth carries no config).
  """
  cfg = (config or umt5.PRESETS["umt5_xxl"]).replace(**runtime)
  return _build(
    lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0)),
    _torch_items(path),
    umt5_wan_key,
    "blocks",
    mesh,
  )
