"""Builds the POSE model set from one DiT config: graphdefs plus initial parameter trees.

G (student), E (EMA) and R (teacher) share one graphdef; F adds LoRA to R's graph, so its base
weights *are* the teacher's (no second copy). Parameters are nnx States, each made by
:func:`pose_jax.sharding.create_state` (or ``abstract_state``): abstract first, then with a mesh
initialised straight into its sharding (no unsharded copy of the DiT ever exists; the LoRA
model's base weights are never materialised).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from pose_jax import sharding as shd
from pose_jax.models.layers import LoRAParam
from pose_jax.models.wan import WanConfig, WanTransformer
from pose_jax.pose.config import PoseConfig
from pose_jax.pose.discriminator import SemanticHead, default_taps


@dataclasses.dataclass(frozen=True)
class Models:
  """Static graphdefs (hashable) plus the tapped blocks of the discriminator backbone."""

  dit: Any  # WanTransformer graphdef (no LoRA): G, R, E
  dit_lora: Any  # WanTransformer graphdef with LoRA: F (merge(dit_lora, lora, base))
  head: Any  # SemanticHead graphdef
  taps: tuple[int, ...]


def _makers(cfg: WanConfig, knobs: PoseConfig, seed: int):
  taps = tuple(knobs.d_layers) or default_taps(cfg.num_layers, min(4, cfg.num_layers))
  lora_cfg = cfg.replace(lora_rank=knobs.lora_rank, lora_alpha=knobs.lora_alpha)
  return taps, dict(
    dit=lambda: WanTransformer(cfg, rngs=nnx.Rngs(seed)),
    lora=lambda: WanTransformer(lora_cfg, rngs=nnx.Rngs(seed + 1)),
    head=lambda: SemanticHead(
      cfg.dim,
      len(taps),
      width=knobs.d_width,
      heads=knobs.d_heads,
      num_queries=knobs.d_num_queries,
      text_dim=cfg.text_dim,
      image_dim=cfg.image_dim,
      conditional=knobs.conditional,
      rngs=nnx.Rngs(seed + 2),
    ),
  )


def build(cfg: WanConfig, knobs: PoseConfig, seed: int = 0, mesh=None, abstract=False):
  """``(models, teacher, lora, head)``: graphdefs and freshly initialised States.

  With ``mesh``, the States are created directly in their shardings (abstract first). With
  ``abstract=True`` (needs ``mesh``) nothing is allocated: the States hold
  ``jax.ShapeDtypeStruct``s carrying their shardings (for ahead-of-time compiles). A tuple of
  names (``"dit"``, ``"lora"``, ``"head"``) makes only those abstract (the trainer reads a
  converted teacher into the abstract ``dit`` State instead of initialising one).
  """
  if abstract and mesh is None:
    raise ValueError("abstract=True needs a mesh (the shardings are part of the result)")
  taps, make = _makers(cfg, knobs, seed)
  filters = {"dit": (), "lora": (LoRAParam,), "head": ()}  # F: only its LoRA is created
  lazy = set(make) if abstract is True else set(abstract or ())
  create = lambda name: shd.abstract_state if name in lazy else shd.create_state
  (dit, teacher), (dit_lora, lora), (head_def, head) = (
    create(name)(maker, mesh, *filters[name]) for name, maker in make.items()
  )
  models = Models(dit=dit, dit_lora=dit_lora, head=head_def, taps=taps)
  return models, teacher, lora, head


def stored_teacher(teacher, knobs: PoseConfig):
  """The frozen teacher as the steps read it: its floating-point parameters in
  ``knobs.teacher_dtype``, shardings kept (a tree of arrays, or of ``ShapeDtypeStruct``s for
  ahead-of-time compiles). The student is initialised from the teacher before this cast."""
  dtype = jnp.dtype(knobs.teacher_dtype)

  def cast(x):
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == dtype:
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype)

  return jax.tree.map(cast, teacher)
