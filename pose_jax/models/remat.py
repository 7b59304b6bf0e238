"""Named rematerialisation policies for the scanned transformer blocks.

``none``  no remat: every activation of every block is kept for the backward pass.
``full``  keep only each block's input (recompute the whole block in the backward pass).
``dots_saveable``  keep matmul outputs, recompute elementwise ops.
``dots_with_no_batch_dims_saveable``  keep weight matmuls, recompute attention's batched dots.
``save_attn_ffn_out``  keep the named outputs of attention and FFN (``checkpoint_name`` tags).
``offload_attn_ffn_out``  as above but offloaded to host memory (TPU/GPU).
"""

from __future__ import annotations

import jax
from jax.ad_checkpoint import checkpoint_name

ATTN_OUT = "attn_out"
FFN_OUT = "ffn_out"

POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots_saveable": jax.checkpoint_policies.dots_saveable,
  "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  "save_attn_ffn_out": jax.checkpoint_policies.save_only_these_names(ATTN_OUT, FFN_OUT),
  "offload_attn_ffn_out": jax.checkpoint_policies.save_and_offload_only_these_names(
    names_which_can_be_saved=[],
    names_which_can_be_offloaded=[ATTN_OUT, FFN_OUT],
    offload_src="device",
    offload_dst="pinned_host",
  ),
}


def tag(x: jax.Array, name: str) -> jax.Array:
  """Names an activation for the ``save_*``/``offload_*`` policies."""
  return checkpoint_name(x, name)
