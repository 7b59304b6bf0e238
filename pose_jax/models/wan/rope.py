"""3D rotary position embedding of Wan (diffusers ``WanRotaryPosEmbed``).

The head dim K is split into frame/height/width parts: h and w get ``2*(K//6)`` each, t the rest.
Each part rotates consecutive channel pairs ``(2i, 2i+1)`` by ``pos * theta**(-2i/part)``.
Angles are computed in float64 with numpy (static for a given video shape), then float32.

Legend: L video tokens (t-major, then h, then w), N heads, K head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def split_sizes(head_dim: int) -> tuple[int, int, int]:
  hw = 2 * (head_dim // 6)
  return head_dim - 2 * hw, hw, hw


@functools.lru_cache(maxsize=32)
def rope_angles(grid: tuple[int, int, int], head_dim: int, max_seq_len: int, theta: float = 1e4):
  """``(cos, sin)`` of shape ``[L, K/2]`` for a ``(T', H', W')`` token grid (numpy float32)."""
  if max(grid) > max_seq_len:
    raise ValueError(f"token grid {grid} exceeds rope_max_seq_len={max_seq_len}")
  parts = []
  for n, dim in zip(grid, split_sizes(head_dim)):
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    parts.append(np.outer(np.arange(n, dtype=np.float64), freqs))  # [n, dim/2]
  t, h, w = grid
  angles = np.concatenate(
    [
      np.broadcast_to(parts[0][:, None, None], (t, h, w, parts[0].shape[-1])),
      np.broadcast_to(parts[1][None, :, None], (t, h, w, parts[1].shape[-1])),
      np.broadcast_to(parts[2][None, None, :], (t, h, w, parts[2].shape[-1])),
    ],
    axis=-1,
  ).reshape(t * h * w, head_dim // 2)
  return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates channel pairs of ``x [B, L, N, K]``; math in float32, result in x's dtype."""
  pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
  x1, x2 = pairs[..., 0], pairs[..., 1]
  cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)
