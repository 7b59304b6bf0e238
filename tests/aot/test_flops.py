"""``pose_jax.aot.flops`` on a text-to-video config (no image tokens, ``image_dim`` None)."""

from pose_jax.aot import flops
from pose_jax.models.wan import preset


def test_t2v_counts_as_i2v_without_image_tokens():
  t2v = preset("t2v_1_3b")
  assert t2v.image_dim is None
  grid, text_len = (3, 60, 104), 512
  got = flops.dit_flops(t2v, 1, grid, text_len, 0)
  want = flops.dit_flops(t2v.replace(image_dim=1280), 1, grid, text_len, 0)
  assert got == want and got["blocks_w"] > 0
  with_image = flops.dit_flops(t2v.replace(image_dim=1280), 1, grid, text_len, 257)
  assert with_image["embed_w"] > got["embed_w"]
