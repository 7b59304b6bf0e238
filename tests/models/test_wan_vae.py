"""Wan2.1 VAE: parity with diffusers ``AutoencoderKLWan``, strict loaders, bf16, bounded memory.

The oracle (:class:`tests.helpers.torch_refs.VAEOracle`) is a tiny diffusers VAE with every
parameter perturbed (no trivial gammas/biases), saved with ``save_pretrained`` and loaded through
:func:`load_vae`. Forwards are jitted once per shape over ``(state, input)``, so weight edits reuse
the compiled function. fp32 bound: max abs error <= ``VAE_TOL`` * max |reference|.
"""

import copy
import inspect
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
from diffusers import AutoencoderKLWan
from flax import nnx

from pose_jax.convert import strict
from pose_jax.convert.errors import CheckpointError
from pose_jax.convert.wan_vae import key_map, load_vae, load_vae_wan_pth
from pose_jax.models.wan.vae import WanVAE, WanVAEConfig, preset
from tests.helpers.numerics import rel_err
from tests.helpers.torch_refs import (
  VAE_BF16_BOUND,
  VAE_TOL,
  VAEOracle,
  to_channels_first,
  to_channels_last,
  torch_vae,
)

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  tm = torch_vae(preset("tiny"))
  path = tmp_path_factory.mktemp("wan_vae")
  tm.save_pretrained(path)
  return str(path), tm


@pytest.fixture(scope="module")
def oracle(ckpt):
  path, tm = ckpt
  return VAEOracle(tm, load_vae(path))


def _edit_param(state, path: tuple[str, ...], fn):
  flat = list(nnx.to_flat_state(state))
  hit = [p for p, _ in flat if tuple(map(str, p)) == path]
  assert hit, f"no parameter {path}"
  return nnx.from_flat_state(
    [(p, v.replace(fn(v.get_value())) if p == hit[0] else v) for p, v in flat]
  )


# --- parity -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "frames,height,width", [(1, 32, 32), (5, 32, 32), (9, 32, 32), (5, 24, 40)]
)
def test_parity_with_diffusers(oracle, frames, height, width):
  x, z, ref = oracle.reference(frames, height, width)
  # The decode check is meaningful only if diffusers' clamp to [-1, 1] leaves most values alone.
  assert (np.abs(ref["video"]) < 1).mean() > 0.5
  err = oracle.errors(oracle.state, x, z, ref)
  print(f"fp32 parity T={frames} {height}x{width}: {err}")
  assert all(e <= VAE_TOL for e in err.values()), err
  lat = ref["mean"].shape
  assert lat == (1, 4, 1 + (frames - 1) // 4, height // 8, width // 8)
  assert ref["video"].shape[2] == frames


def _transpose(w):
  return jnp.swapaxes(w, -1, -2)


def _swap_qk(w):  # [I, 3C] -> the k columns used as q and vice versa
  q, k, v = jnp.split(w, 3, axis=-1)
  return jnp.concatenate([k, q, v], axis=-1)


# Layout errors that keep every shape (square weights transposed, q/k swapped): parity must catch
# each one. The attention edits prove the mid-block attention is exercised in both halves.
LAYOUT_ERRORS = [
  (("encoder", "mid_block", "attentions", "0", "proj", "kernel"), _transpose),
  (("decoder", "mid_block", "attentions", "0", "proj", "kernel"), _transpose),
  (("encoder", "mid_block", "attentions", "0", "to_qkv", "kernel"), _swap_qk),
  (("decoder", "mid_block", "attentions", "0", "to_qkv", "kernel"), _swap_qk),
  (("encoder", "down_blocks", "3", "time_conv", "kernel"), _transpose),
  (("decoder", "up_blocks", "2", "resnets", "1", "conv1", "kernel"), _transpose),
  (("quant_conv", "kernel"), _transpose),
]


@pytest.mark.parametrize(
  "path,edit", LAYOUT_ERRORS, ids=lambda a: ".".join(a) if isinstance(a, tuple) else a.__name__
)
def test_layout_error_breaks_parity(oracle, path, edit):
  x, z, ref = oracle.reference(5, 32, 32)
  err = oracle.errors(_edit_param(oracle.state, path, edit), x, z, ref)
  side = ("video",) if path[0] in ("decoder", "post_quant_conv") else ("mean", "logvar")
  assert max(err[k] for k in side) > 100 * VAE_TOL, (path, err)


@pytest.mark.parametrize("frames", [4, 6])
def test_frame_count_must_be_1_plus_4k(oracle, frames):
  with pytest.raises(ValueError, match=r"1 \+ 4k"):
    oracle.encode(oracle.state, jnp.zeros((1, frames, 16, 16, 3)))


def test_spatial_size_must_be_multiple_of_8(oracle):
  with pytest.raises(ValueError, match="multiples of 8"):
    oracle.encode(oracle.state, jnp.zeros((1, 5, 20, 16, 3)))


def test_normalize_latents_matches_pipeline_and_inverts(oracle):
  vae = nnx.merge(oracle.graphdef, oracle.state)
  cfg = vae.cfg
  mu = jax.random.normal(jax.random.key(0), (1, 2, 3, 5, cfg.z_dim))
  mean = np.asarray(cfg.latents_mean, np.float32)
  std = np.asarray(cfg.latents_std, np.float32)
  # diffusers' WanImageToVideoPipeline: (latents - mean) * (1 / std).
  np.testing.assert_allclose(
    vae.normalize_latents(mu), (np.asarray(mu) - mean) * (1 / std), rtol=1e-6
  )
  np.testing.assert_allclose(vae.denormalize_latents(vae.normalize_latents(mu)), mu, atol=1e-6)


def test_presets_match_diffusers_defaults():
  sig = inspect.signature(AutoencoderKLWan.__init__).parameters.values()
  real = {p.name: p.default for p in sig if p.default is not inspect.Parameter.empty}
  cfg = WanVAEConfig.from_diffusers(real)
  assert cfg == preset("wan2_1")
  assert len(cfg.latents_mean) == len(cfg.latents_std) == cfg.z_dim == 16
  with pytest.raises(ValueError, match="is_residual"):
    WanVAEConfig.from_diffusers({**real, "is_residual": True})


def test_wan2_1_preset_matches_diffusers_layout():
  """Every tensor of the real diffusers VAE (built on torch's meta device) maps onto ``wan2_1``."""
  with torch.device("meta"):
    sd = AutoencoderKLWan().state_dict()
  _, state = nnx.split(nnx.eval_shape(lambda: WanVAE(preset("wan2_1"), rngs=nnx.Rngs(0))))
  targets = strict.flat_shapes(state)
  mapped = {}
  for key, t in sd.items():
    tgt = key_map(key)
    assert tgt is not None, key
    mapped[tgt.path] = tgt.transform(np.broadcast_to(np.float32(0), tuple(t.shape))).shape
    assert tgt.out_shape(t.shape) == mapped[tgt.path], key  # what the strict matcher checks
  assert mapped == {p: tuple(v.shape) for p, v in targets.items()}
  assert not strict.check(sd.items(), targets, key_map), "the matcher disagrees"
  assert sum(int(np.prod(s)) for s in mapped.values()) == 126_892_531


# --- strict loading ---------------------------------------------------------------------------


def _copy_with(src, dst, edit):
  shutil.copytree(src, dst)
  tensors = safetensors.numpy.load_file(os.path.join(dst, WEIGHTS))
  edit(tensors)
  safetensors.numpy.save_file(tensors, os.path.join(dst, WEIGHTS))
  return str(dst)


def test_renamed_key_is_reported(ckpt, tmp_path):
  key = "decoder.up_blocks.1.resnets.0.conv_shortcut.bias"
  path = _copy_with(ckpt[0], tmp_path / "c", lambda t: t.update({key + "_x": t.pop(key)}))
  with pytest.raises(CheckpointError) as e:
    load_vae(path)
  assert key + "_x" in str(e.value)
  assert "decoder/up_blocks/1/resnets/0/conv_shortcut/bias" in str(e.value)


def test_missing_key_is_reported(ckpt, tmp_path):
  path = _copy_with(ckpt[0], tmp_path / "c", lambda t: t.pop("encoder.norm_out.gamma"))
  with pytest.raises(CheckpointError, match="missing.*encoder/norm_out/gamma"):
    load_vae(path)


def test_transposed_shape_is_reported(ckpt, tmp_path):
  key = "encoder.down_blocks.2.conv1.weight"  # (16, 8, 3, 3, 3)

  def edit(t):
    t[key] = np.ascontiguousarray(np.swapaxes(t[key], 0, 1))

  path = _copy_with(ckpt[0], tmp_path / "c", edit)
  with pytest.raises(CheckpointError, match=r"wrong shape.*" + key.replace(".", r"\.")):
    load_vae(path)


# --- original Wan2.1_VAE.pth ------------------------------------------------------------------

# diffusers -> original Wan (wan/modules/vae.py) names for the TINY config, written out by hand
# from Wan's module tree, independently of pose_jax.convert.wan_vae. Decoder upsamples are one
# flat Sequential: per stage (num_res_blocks + 1) = 2 ResidualBlocks, then a Resample.
_WAN_PREFIX = {
  "quant_conv.": "conv1.",
  "post_quant_conv.": "conv2.",
  "encoder.conv_in.": "encoder.conv1.",
  "decoder.conv_in.": "decoder.conv1.",
  "encoder.norm_out.": "encoder.head.0.",
  "decoder.norm_out.": "decoder.head.0.",
  "encoder.conv_out.": "encoder.head.2.",
  "decoder.conv_out.": "decoder.head.2.",
  "encoder.mid_block.resnets.0.": "encoder.middle.0.",
  "encoder.mid_block.attentions.0.": "encoder.middle.1.",
  "encoder.mid_block.resnets.1.": "encoder.middle.2.",
  "decoder.mid_block.resnets.0.": "decoder.middle.0.",
  "decoder.mid_block.attentions.0.": "decoder.middle.1.",
  "decoder.mid_block.resnets.1.": "decoder.middle.2.",
  "encoder.down_blocks.": "encoder.downsamples.",
  "decoder.up_blocks.0.resnets.0.": "decoder.upsamples.0.",
  "decoder.up_blocks.0.resnets.1.": "decoder.upsamples.1.",
  "decoder.up_blocks.0.upsamplers.0.": "decoder.upsamples.2.",
  "decoder.up_blocks.1.resnets.0.": "decoder.upsamples.3.",
  "decoder.up_blocks.1.resnets.1.": "decoder.upsamples.4.",
  "decoder.up_blocks.1.upsamplers.0.": "decoder.upsamples.5.",
  "decoder.up_blocks.2.resnets.0.": "decoder.upsamples.6.",
  "decoder.up_blocks.2.resnets.1.": "decoder.upsamples.7.",
  "decoder.up_blocks.2.upsamplers.0.": "decoder.upsamples.8.",
  "decoder.up_blocks.3.resnets.0.": "decoder.upsamples.9.",
  "decoder.up_blocks.3.resnets.1.": "decoder.upsamples.10.",
}
# Inside a ResidualBlock: residual = Sequential(norm, SiLU, conv, norm, SiLU, Dropout, conv).
_WAN_RESIDUAL = {
  ".norm1.": ".residual.0.",
  ".conv1.": ".residual.2.",
  ".norm2.": ".residual.3.",
  ".conv2.": ".residual.6.",
  ".conv_shortcut.": ".shortcut.",
}


def _to_wan_key(key: str) -> str:
  for old, new in _WAN_RESIDUAL.items():
    key = key.replace(old, new)
  prefix = max((p for p in _WAN_PREFIX if key.startswith(p)), key=len)
  return _WAN_PREFIX[prefix] + key[len(prefix) :]


@pytest.fixture(scope="module")
def wan_pth(ckpt, tmp_path_factory):
  sd = {_to_wan_key(k): v.clone() for k, v in ckpt[1].state_dict().items()}
  assert len(sd) == len(ckpt[1].state_dict())
  assert {
    "conv1.weight",
    "decoder.upsamples.3.shortcut.weight",
    "encoder.head.0.gamma",
    "encoder.downsamples.0.residual.6.weight",
    "decoder.middle.1.to_qkv.bias",
  } <= set(sd)
  path = str(tmp_path_factory.mktemp("wan_pth") / "Wan2.1_VAE.pth")
  torch.save(sd, path)
  return path, sd


def test_wan_pth_import_matches_diffusers(oracle, wan_pth):
  model = load_vae_wan_pth(wan_pth[0], preset("tiny"))
  x, z, ref = oracle.reference(5, 32, 32, seed=3)
  err = oracle.errors(nnx.state(model), x, z, ref)  # same graph, the .pth weights
  print(f"Wan .pth import parity: {err}")
  assert all(e <= VAE_TOL for e in err.values()), err


def test_wan_pth_unknown_key_is_reported(wan_pth, tmp_path):
  sd = dict(wan_pth[1])
  sd["decoder.upsamples.11.residual.0.gamma"] = torch.ones(8, 1, 1, 1)
  path = str(tmp_path / "bad.pth")
  torch.save(sd, path)
  with pytest.raises(CheckpointError, match=r"unexpected.*decoder\.upsamples\.11"):
    load_vae_wan_pth(path, preset("tiny"))


# --- bf16 -------------------------------------------------------------------------------------

# The bound (VAE_BF16_BOUND, with its measurements in tests/helpers/torch_refs.py): ours may be
# at most 2x diffusers' own bf16 error (max and mean abs) and within 0.05 (encode) / 0.25 (decode)
# of the fp32 reference. A real bug (a wrong layer) gives O(1) errors.


def test_bf16_runs_close_to_fp32(ckpt, oracle):
  x, z, ref = oracle.reference(5, 32, 32)
  tb = copy.deepcopy(oracle.tm).to(torch.bfloat16)
  with torch.no_grad():
    post = tb.encode(x.to(torch.bfloat16)).latent_dist
    torch_bf16 = {
      "mean": post.mean,
      "logvar": post.logvar,
      "video": tb.decode(z.to(torch.bfloat16)).sample,
    }
  torch_bf16 = {k: v.float().numpy() for k, v in torch_bf16.items()}
  model = load_vae(ckpt[0], dtype="bfloat16")
  assert all(v.get_value().dtype == jnp.float32 for _, v in nnx.to_flat_state(nnx.state(model)))
  mean, logvar = nnx.jit(WanVAE.encode)(model, to_channels_last(x))
  video = nnx.jit(WanVAE.decode)(model, to_channels_last(z))
  assert mean.dtype == video.dtype == jnp.float32
  ours = {
    "mean": to_channels_first(mean),
    "logvar": to_channels_first(logvar),
    "video": to_channels_first(video),
  }
  for k in ref:
    err, theirs = rel_err(ours[k], ref[k]), rel_err(torch_bf16[k], ref[k])
    mae, theirs_mae = np.abs(ours[k] - ref[k]).mean(), np.abs(torch_bf16[k] - ref[k]).mean()
    print(
      f"bf16 {k}: max err / max|fp32 ref| = {err:.2e} (diffusers bf16: {theirs:.2e}); "
      f"mean abs err {mae:.2e} (diffusers bf16: {theirs_mae:.2e})"
    )
    assert np.isfinite(err) and err <= VAE_BF16_BOUND[k], (k, err)
    assert err <= 2 * theirs and mae <= 2 * theirs_mae, (k, err, theirs, mae, theirs_mae)


# --- memory -----------------------------------------------------------------------------------


def _decode_memory(latent_frames: int, h: int, w: int):
  cfg = preset("wan2_1")
  graphdef, state = nnx.split(nnx.eval_shape(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))
  z = jax.ShapeDtypeStruct((1, latent_frames, h, w, cfg.z_dim), jnp.float32)
  fn = jax.jit(lambda s, z: nnx.merge(graphdef, s).decode(z))
  return fn.lower(state, z).compile().memory_analysis()


def test_decode_memory_is_bounded_at_480x832():
  """Real Wan2.1 VAE, abstract weights: decode 11 vs 21 latent frames (41 vs 81 video frames)."""
  mib = 2**20
  m11, m21 = _decode_memory(11, 60, 104), _decode_memory(21, 60, 104)
  t11, t21 = m11.temp_size_in_bytes, m21.temp_size_in_bytes
  print(
    f"decode 480x832 fp32: temp 11 -> {t11 / mib:.0f} MiB, 21 -> {t21 / mib:.0f} MiB; "
    f"output {m11.output_size_in_bytes / mib:.0f} -> {m21.output_size_in_bytes / mib:.0f} MiB"
  )
  video = 81 * 480 * 832 * 3 * 4
  assert m21.output_size_in_bytes == video
  assert m11.output_size_in_bytes == 41 * 480 * 832 * 3 * 4
  # Temporaries (activations of one chunk + feature caches) do not depend on the frame count.
  assert t21 <= 1.02 * t11
