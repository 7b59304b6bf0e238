"""Wan2.1 VAE checkpoints -> :class:`WanVAE` parameters, strictly (every key placed, all used).

Two sources:
  * diffusers ``AutoencoderKLWan`` (``config.json`` + ``diffusion_pytorch_model.safetensors``):
    :func:`load_vae`. Our module tree keeps diffusers' names, so a key maps by
      ``<conv>.weight [O, I, kt, kh, kw]`` -> ``<conv>.kernel [kt, kh, kw, I, O]``
      ``resample.1.weight [O, I, kh, kw]``  -> ``resample.kernel [kh, kw, I, O]`` (the ``.1``
                                               indexes diffusers' ``Sequential``)
      ``to_qkv|proj.weight [O, I, 1, 1]``   -> ``.kernel [I, O]``
      ``*.gamma (C, 1, 1[, 1])``             -> ``.gamma (C,)``;   biases as they are.
  * the original release file ``Wan2.1_VAE.pth`` (a torch state dict of ``WanVAE_`` in the
    Wan2.1 repo's ``wan/modules/vae.py``): :func:`load_vae_wan_pth`. Its keys are first renamed
    to diffusers' by :func:`wan_to_diffusers_key`, then mapped as above.

torch is imported only inside :func:`load_vae_wan_pth`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from pose_jax.convert import strict
from pose_jax.convert.errors import CheckpointError
from pose_jax.convert.safetensors_io import SafetensorsReader, read_config
from pose_jax.models.wan.vae import WanVAE, WanVAEConfig, preset
from pose_jax.paths import GCSFUSE, local_only

# --- diffusers key -> our parameter ---------------------------------------------------------


@strict.transform(lambda s: (*s[2:], s[1], s[0]) if len(s) == 5 else s)
def _conv3d(w: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(w.transpose(2, 3, 4, 1, 0)) if w.ndim == 5 else w


@strict.transform(lambda s: (*s[2:], s[1], s[0]) if len(s) == 4 else s)
def _conv2d(w: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0)) if w.ndim == 4 else w


@strict.transform(lambda s: (s[1], s[0]) if len(s) == 4 and s[2:] == (1, 1) else s)
def _pointwise(w: np.ndarray) -> np.ndarray:
  if w.ndim == 4 and w.shape[2:] == (1, 1):
    return np.ascontiguousarray(w[:, :, 0, 0].T)
  return w


@strict.transform(lambda s: s[:1] if len(s) >= 1 and math.prod(s) == s[0] else s)
def _gamma(w: np.ndarray) -> np.ndarray:
  return w.reshape(w.shape[0]) if w.ndim >= 1 and w.size == w.shape[0] else w


def key_map(key: str) -> strict.Target | None:
  """diffusers ``AutoencoderKLWan`` key -> target in our flat state (None: no such parameter)."""
  parts = key.replace(".resample.1.", ".resample.").split(".")
  module, leaf = tuple(parts[:-1]), parts[-1]
  if not module:
    return None
  if leaf == "bias":
    return strict.Target((*module, "bias"), None)
  if leaf == "gamma":
    return strict.Target((*module, "gamma"), None, _gamma)
  if leaf != "weight":
    return None
  if module[-1] in ("to_qkv", "proj"):
    fn = _pointwise
  elif module[-1] == "resample":
    fn = _conv2d
  else:
    fn = _conv3d
  return strict.Target((*module, "kernel"), None, fn)


# --- original Wan2.1 key -> diffusers key ---------------------------------------------------

# Inside a ResidualBlock: Sequential(RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, conv).
_RESIDUAL = {
  "residual.0": "norm1",
  "residual.2": "conv1",
  "residual.3": "norm2",
  "residual.6": "conv2",
  "shortcut": "conv_shortcut",
}
# Encoder3d / Decoder3d heads and middles; WanVAE_'s conv1/conv2 are the (post-)quant convs.
_MIDDLE = {
  "middle.0": "mid_block.resnets.0",
  "middle.1": "mid_block.attentions.0",
  "middle.2": "mid_block.resnets.1",
}
_HEAD = {"head.0": "norm_out", "head.2": "conv_out", "conv1": "conv_in"}
_TOP = {"conv1": "quant_conv", "conv2": "post_quant_conv"}


def _decoder_upsamples(cfg: WanVAEConfig) -> list[str]:
  """Flat index of Wan's ``decoder.upsamples`` -> diffusers ``up_blocks`` prefix."""
  names = []
  for i in range(len(cfg.dim_mult)):
    names += [f"up_blocks.{i}.resnets.{r}" for r in range(cfg.num_res_blocks + 1)]
    if i != len(cfg.dim_mult) - 1:
      names.append(f"up_blocks.{i}.upsamplers.0")
  return names


def _rename_inner(rest: str) -> str:
  """A residual block's inner names (``residual.N`` / ``shortcut``); others stay."""
  for old, new in _RESIDUAL.items():
    if rest == old or rest.startswith(old + "."):
      return new + rest[len(old) :]
  return rest


def wan_to_diffusers_key(key: str, cfg: WanVAEConfig) -> str | None:
  """Original ``WanVAE_`` key -> diffusers ``AutoencoderKLWan`` key (None: unknown layout)."""
  top, _, rest = key.partition(".")
  if top in _TOP and rest in ("weight", "bias"):
    return f"{_TOP[top]}.{rest}"
  if top not in ("encoder", "decoder"):
    return None
  m = re.match(r"^(downsamples|upsamples)\.(\d+)\.(.+)$", rest)
  if m:
    kind, idx, inner = m.group(1), int(m.group(2)), m.group(3)
    if kind == "downsamples" and top == "encoder":
      return f"encoder.down_blocks.{idx}.{_rename_inner(inner)}"
    ups = _decoder_upsamples(cfg)
    if kind == "upsamples" and top == "decoder" and idx < len(ups):
      return f"decoder.{ups[idx]}.{_rename_inner(inner)}"
    return None
  for table in (_MIDDLE, _HEAD):
    for old, new in table.items():
      if rest.startswith(old + "."):
        inner = rest[len(old) + 1 :]
        if new.startswith("mid_block.resnets"):
          inner = _rename_inner(inner)
        return f"{top}.{new}.{inner}"
  return None


def wan_key_map(cfg: WanVAEConfig) -> Callable[[str], strict.Target | None]:
  def fn(key: str) -> strict.Target | None:
    new = wan_to_diffusers_key(key, cfg)
    return None if new is None else key_map(new)

  return fn


# --- loading --------------------------------------------------------------------------------


def _build(cfg: WanVAEConfig, items: Iterable[tuple[str, np.ndarray]], kmap) -> WanVAE:
  """A :class:`WanVAE` whose every parameter comes from ``items`` (no random init)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))
  targets = strict.flat_shapes(state, nnx.Param)
  buffers = strict.fill(items, targets, kmap)
  for path, var in nnx.to_flat_state(state):
    key = tuple(str(p) for p in path)
    var.set_value(jnp.asarray(buffers[key], dtype=targets[key].dtype))
  return nnx.merge(graphdef, state)


def load_vae(path: str, **runtime) -> WanVAE:
  """Builds a :class:`WanVAE` from a diffusers directory (``config.json`` + weights).

  ``runtime`` overrides run settings of :class:`WanVAEConfig` (``dtype``, ``param_dtype``).
  Raises :class:`CheckpointError` listing every unexpected, missing or mis-shaped key.
  """
  cfg = WanVAEConfig.from_diffusers(read_config(path), **runtime)
  return _build(cfg, SafetensorsReader(path).items(), key_map)


def load_vae_wan_pth(path: str, cfg: WanVAEConfig | None = None) -> WanVAE:
  """Builds a :class:`WanVAE` from the original ``Wan2.1_VAE.pth`` (a torch state dict).

  The file has no config: ``cfg`` defaults to the ``wan2_1`` preset.
  """
  import torch  # only here: the rest of pose_jax never needs torch

  cfg = cfg or preset("wan2_1")
  local_only(path, "torch checkpoint", "torch.load reads local files", f"copy it or {GCSFUSE}")
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # unpickling / zip errors come in many types
    raise CheckpointError(f"{path}: cannot read torch state dict ({e})") from e
  if not isinstance(sd, dict):
    raise CheckpointError(f"{path}: expected a state dict, got {type(sd).__name__}")

  def items():
    for k, v in sd.items():
      yield k, v.detach().to(torch.float32).numpy()

  return _build(cfg, items(), wan_key_map(cfg))
