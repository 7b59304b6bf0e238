"""Model FLOPs of the POSE steps, counted analytically (XLA's cost analysis counts a scanned
layer body once, so it undercounts by the number of layers).

The convention, named ``analytic-mfu`` in the AOT report (its ``flops_convention`` key):

  * ``model_flops``: matmul FLOPs (2 m n k) of the DiT passes one step makes on the global
    batch (``passes``: each phase's record in :mod:`pose_jax.pose.phases`, :func:`phase_passes`):
    the DiT's weight matmuls, self- and cross-attention QK^T and PV, the LoRA deltas, the
    embedders and the semantic head. Elementwise ops, norms, RoPE and the optimizer are not
    counted.
  * Per pass: forward 1x; backward with weight and input gradients 2x; input gradients only
    (frozen weights) 1x for weight matmuls and 2x for attention, plus the LoRA weight gradients
    for F.
  * Remat recompute is not in ``model_flops`` (the MFU convention); it is reported separately,
    ``remat_recompute_flops``.
  * ``xla_flops_undercounted``: XLA's cost analysis, which counts a scanned layer body once.
"""

from __future__ import annotations

from pose_jax.pose import phases


def dit_flops(cfg, batch: int, grid, text_len: int, image_len: int, blocks=None, lora_rank=0):
  """Matmul FLOPs (2 m n k) of one DiT forward on ``batch`` clips, split into
  ``blocks_w`` (weight matmuls in the blocks), ``attn`` (QK^T and PV of self- and cross-attention),
  ``lora`` (the LoRA deltas), ``embed_w`` (text/image/time embedders) and ``io_w`` (patch
  embedding + output projection). Elementwise ops, norms and RoPE are not counted."""
  t, h, w = grid
  pt, ph, pw = cfg.patch_size
  length = (t // pt) * (h // ph) * (w // pw)
  d, f, n_blocks = cfg.dim, cfg.ffn_dim, cfg.num_layers if blocks is None else blocks
  img = image_len if cfg.is_i2v else 0
  tok = batch * length
  per_block_w = (
    2 * tok * d * d * 4  # self-attention q, k, v, out
    + 2 * tok * d * d * 2  # cross-attention q, out
    + 2 * batch * (text_len + img) * d * d * 2  # cross-attention k, v on text (+ image)
    + 2 * tok * d * f * 2  # FFN
  )
  per_block_attn = 2 * 2 * tok * d * (length + text_len + img)
  # LoRA on every Dense of the blocks: a (in x r) and b (r x out) per projection.
  lora_dims = [(d, d)] * (8 + 2 * bool(img)) + [(d, f), (f, d)]
  rows = (
    [tok] * 4 + [tok, batch * text_len, batch * text_len, tok] + [batch * img] * (2 * bool(img))
  )
  rows += [tok, tok]
  per_block_lora = sum(2 * r * lora_rank * (i + o) for r, (i, o) in zip(rows, lora_dims))
  embed_w = (
    2
    * batch
    * (
      text_len * (cfg.text_dim * d + d * d)
      + img * ((cfg.image_dim or 0) ** 2 + (cfg.image_dim or 0) * d)  # T2V: no image tokens
      + (cfg.freq_dim * d + d * d + d * 6 * d)
    )
  )
  io_w = 2 * tok * (cfg.in_channels * pt * ph * pw) * d
  if blocks is None:  # the output head (taps stop after the last tapped block)
    io_w += 2 * tok * d * cfg.out_channels * pt * ph * pw
  return dict(
    blocks_w=n_blocks * per_block_w,
    attn=n_blocks * per_block_attn,
    lora=n_blocks * per_block_lora,
    embed_w=embed_w,
    io_w=io_w,
    tokens=length,
  )


def _pass(fl, backward: str) -> float:
  """FLOPs of one pass: forward plus its backward. ``full``: weight and input gradients (2x
  each matmul); ``input``: input gradients only (frozen weights, gradient flows to the input:
  1x weight matmuls, 2x attention); ``lora``: input gradients plus the LoRA weight gradients."""
  fwd = fl["blocks_w"] + fl["attn"] + fl["lora"] + fl["embed_w"] + fl["io_w"]
  if backward == "none":
    return fwd
  if backward == "full":
    return fwd + 2 * (fl["blocks_w"] + fl["attn"] + fl["embed_w"] + fl["io_w"])
  if backward == "input":
    return fwd + fl["blocks_w"] + 2 * fl["attn"] + fl["io_w"]
  if backward == "lora":
    return fwd + fl["blocks_w"] + 2 * fl["attn"] + 2 * fl["lora"] + fl["io_w"]
  raise ValueError(backward)


SAMPLE = "sample"  # the one-step sampler: a pseudo-phase with FLOPs but no record


def phase_passes(phase: str, knobs) -> list[tuple[str, int, str, str]]:
  """``[(what, count, model, backward)]``: the DiT passes one step of ``phase`` makes on the
  whole batch (its record's ``passes``, :mod:`pose_jax.pose.phases`; micro-batching splits the
  batch, not the count).
  ``model``: ``dit`` (all blocks + head), ``lora`` (F = teacher + LoRA), ``taps`` (blocks up to
  the last tapped one, no head)."""
  if phase == SAMPLE:
    return [("G one-step", 1, "dit", "none")]
  return phases.get(phase).passes(knobs)


def _calls_head(phase: str, knobs) -> bool:
  """The discriminator head runs exactly where it is trained."""
  return phase != SAMPLE and "head" in phases.get(phase).trains(knobs)


def phase_flops(phase, knobs, cfg, taps, batch: int, grid, text_len, image_len) -> dict:
  """Model FLOPs of one step (MFU convention: forward + backward, no remat recompute), the
  passes they come from, and the recompute that ``remat`` adds on top (hardware FLOPs)."""
  models = {
    "dit": dit_flops(cfg, batch, grid, text_len, image_len),
    "lora": dit_flops(cfg, batch, grid, text_len, image_len, lora_rank=knobs.lora_rank),
    "taps": dit_flops(cfg, batch, grid, text_len, image_len, blocks=max(taps) + 1),
  }
  rows, total, recompute = [], 0.0, 0.0
  for what, count, model, backward in phase_passes(phase, knobs):
    fl = models[model]
    flops = count * _pass(fl, backward)
    total += flops
    if backward != "none" and cfg.remat != "none":  # blocks re-run forward in the backward
      recompute += count * (fl["blocks_w"] + fl["attn"] + fl["lora"])
    rows.append(dict(what=what, count=count, model=model, backward=backward, flops=flops))
  if _calls_head(phase, knobs):
    total += head_flops(knobs, cfg, taps, batch, models["dit"]["tokens"], text_len, image_len)
  return dict(
    model_flops=total,
    remat_recompute_flops=recompute,
    passes=rows,
    video_tokens=models["dit"]["tokens"],
    dit_forward_flops=_pass(models["dit"], "none"),
  )


def head_flops(knobs, cfg, taps, batch, length, text_len, image_len) -> float:
  """The semantic head's matmuls per step: 4 calls (fake for G, fake, real, perturbed), forward
  + backward (~3x; its cost is dominated by projecting the tapped tokens D -> width)."""
  e, q = knobs.d_width, knobs.d_num_queries
  ctx = q + (text_len + (image_len if cfg.is_i2v else 0)) * bool(knobs.conditional)
  per_tap = 2 * batch * length * cfg.dim * e + 2 * batch * (2 * length * e * e + 4 * q * e * e)
  per_tap += 4 * batch * q * length * e
  own = 2 * batch * ctx * (4 * e * e + 8 * e * e) + 4 * batch * ctx * ctx * e
  own += 2 * batch * (text_len * cfg.text_dim + image_len * (cfg.image_dim or 0)) * e
  return 3.0 * 4 * (len(taps) * per_tap + own)
