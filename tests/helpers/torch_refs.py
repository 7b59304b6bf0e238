"""Tiny random diffusers Wan transformers (the torch oracle) and helpers shared by the tests."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import WanTransformer3DModel

from pose_jax.models.wan import WanConfig


def torch_wan(cfg: WanConfig, seed: int = 0, noise: float = 0.1) -> WanTransformer3DModel:
  """A diffusers model for ``cfg`` with every parameter perturbed (no trivial norms/biases)."""
  torch.manual_seed(seed)
  kw = cfg.to_diffusers()
  kw.pop("_class_name")
  model = WanTransformer3DModel(**kw).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn_like(p) * noise)
  return model


def inputs(cfg: WanConfig, batch=2, frames=3, height=8, width=6, text_len=7, image_len=4, seed=1):
  """Random channels-first torch inputs; timesteps differ per sample."""
  g = torch.Generator().manual_seed(seed)
  out = dict(
    hidden_states=torch.randn(batch, cfg.in_channels, frames, height, width, generator=g),
    timestep=torch.linspace(17.0, 930.0, batch),
    encoder_hidden_states=torch.randn(batch, text_len, cfg.text_dim, generator=g),
  )
  if cfg.is_i2v:
    out["encoder_hidden_states_image"] = torch.randn(batch, image_len, cfg.image_dim, generator=g)
  return out


def to_jax_args(inp: dict):
  """torch inputs -> positional args of ``WanTransformer`` (channels-last numpy)."""
  x = inp["hidden_states"].numpy().transpose(0, 2, 3, 4, 1)
  img = inp.get("encoder_hidden_states_image")
  return (
    x,
    inp["timestep"].numpy(),
    inp["encoder_hidden_states"].numpy(),
    None if img is None else img.numpy(),
  )


def to_channels_first(y) -> np.ndarray:
  return np.asarray(y).transpose(0, 4, 1, 2, 3)


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())
