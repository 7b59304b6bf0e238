"""Builds the POSE model set from one DiT config: graphdefs plus initial parameter trees.

G (student), E (EMA) and R (teacher) share one graphdef; F adds LoRA to R's graph, so its base
weights *are* the teacher's (no second copy). Parameters are returned as nnx States.
"""

from __future__ import annotations

from flax import nnx

from pose_jax.models.layers import LoRAParam
from pose_jax.models.wan import WanConfig, WanTransformer
from pose_jax.pose.discriminator import SemanticHead, default_taps
from pose_jax.pose.knobs import PoseKnobs
from pose_jax.steps import Models


def build(cfg: WanConfig, knobs: PoseKnobs, seed: int = 0):
  """``(models, teacher, lora, head)``; the student and EMA start as copies of the teacher."""
  graphdef, teacher = nnx.split(WanTransformer(cfg, rngs=nnx.Rngs(seed)))
  # Only the LoRA leaves of this model are kept; its base weights are the teacher's.
  lora_cfg = cfg.replace(lora_rank=knobs.lora_rank, lora_alpha=knobs.lora_alpha)
  dit_lora, lora, _ = nnx.split(WanTransformer(lora_cfg, rngs=nnx.Rngs(seed + 1)), LoRAParam, ...)
  taps = knobs.d_layers or default_taps(cfg.num_layers, min(4, cfg.num_layers))
  head_model = SemanticHead(
    cfg.dim,
    len(taps),
    width=knobs.d_width,
    heads=knobs.d_heads,
    num_queries=knobs.d_num_queries,
    text_dim=cfg.text_dim,
    image_dim=cfg.image_dim,
    conditional=knobs.conditional,
    rngs=nnx.Rngs(seed + 2),
  )
  head_def, head = nnx.split(head_model)
  return (
    Models(dit=graphdef, dit_lora=dit_lora, head=head_def, taps=tuple(taps)),
    teacher,
    lora,
    head,
  )
