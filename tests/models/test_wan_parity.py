"""fp32 parity of WanTransformer with diffusers' WanTransformer3DModel (forward and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from pose_jax.convert.wan_diffusers import load_transformer
from pose_jax.models.wan import preset
from tests.helpers.torch_refs import inputs, rel_err, to_channels_first, to_jax_args, torch_wan


@pytest.fixture(scope="module", params=["tiny", "tiny_t2v"])
def pair(request, tmp_path_factory):
  cfg = preset(request.param)
  tm = torch_wan(cfg)
  path = tmp_path_factory.mktemp(request.param)
  tm.save_pretrained(path)
  return cfg, tm, load_transformer(str(path))


def _torch_forward(tm, inp, pad_text_to=None):
  inp = dict(inp)
  if pad_text_to and "encoder_hidden_states_image" in inp:
    txt = inp["encoder_hidden_states"]
    inp["encoder_hidden_states"] = torch.cat(
      [txt, torch.zeros(txt.shape[0], pad_text_to - txt.shape[1], txt.shape[2])], 1
    )
  with torch.no_grad():
    return tm(**inp, return_dict=False)[0].numpy(), inp


def test_forward_matches_diffusers(pair):
  cfg, tm, model = pair
  # batch 2, different timesteps, 3 latent frames, H != W; I2V text padded to diffusers' 512.
  inp = inputs(cfg, batch=2, frames=3, height=8, width=6)
  ref, inp = _torch_forward(tm, inp, pad_text_to=512)
  out = to_channels_first(model(*map(_j, to_jax_args(inp))))
  assert out.shape == ref.shape
  assert rel_err(out, ref) <= 1e-5, rel_err(out, ref)


def test_explicit_image_split_equals_diffusers_512_rule():
  """Our image/text split is explicit; diffusers infers it as 'everything before the last 512'."""
  cfg = preset("tiny")
  tm = torch_wan(cfg, seed=3)
  model = nnx.merge(*_split_from(tm, cfg))
  inp = inputs(cfg, batch=1, text_len=512, image_len=5, seed=4)
  with torch.no_grad():
    ref = tm(**inp, return_dict=False)[0].numpy()
    # Short text (not padded): diffusers silently routes the image tokens through the text K/V.
    short = dict(inp, encoder_hidden_states=inp["encoder_hidden_states"][:, :9])
    ref_short = tm(**short, return_dict=False)[0].numpy()
  out = to_channels_first(model(*map(_j, to_jax_args(inp))))
  assert rel_err(out, ref) <= 1e-5
  ours_short = to_channels_first(model(*map(_j, to_jax_args(short))))
  # Ours keeps the image branch for any text length; diffusers' heuristic does not.
  assert rel_err(ours_short, ref_short) > 1e-3


def gradient_errors(cfg, tm, model) -> dict[str, float]:
  """Relative error of our gradients vs torch autograd for a weighted-sum loss: w.r.t. the
  input, the text tokens, one ``to_q``, one FFN kernel and the output ``scale_shift_table``."""
  inp = inputs(cfg, batch=2, frames=2, height=4, width=6, text_len=5)
  _, inp = _torch_forward(tm, inp, pad_text_to=512)
  inp = {k: v.clone().requires_grad_(k != "timestep") for k, v in inp.items()}
  weight = torch.from_numpy(
    np.random.default_rng(0).standard_normal((2, cfg.out_channels, 2, 4, 6)).astype(np.float32)
  )
  tm.zero_grad(set_to_none=True)
  (tm(**inp, return_dict=False)[0] * weight).sum().backward()
  blk = tm.blocks[1]
  t_grads = {
    "x": inp["hidden_states"].grad.numpy().transpose(0, 2, 3, 4, 1),
    "text": inp["encoder_hidden_states"].grad.numpy(),
    "to_q": blk.attn1.to_q.weight.grad.numpy().T,
    "ffn_in": blk.ffn.net[0].proj.weight.grad.numpy().T,
    "table": tm.scale_shift_table.grad.numpy(),
  }
  graphdef, params = nnx.split(model)
  x, t, txt, img = map(_j, to_jax_args({k: v.detach() for k, v in inp.items()}))
  w = jnp.asarray(weight.numpy().transpose(0, 2, 3, 4, 1))

  def loss(params, x, txt):
    return (nnx.merge(graphdef, params)(x, t, txt, img) * w).sum()

  gp, gx, gt = jax.grad(loss, argnums=(0, 1, 2))(params, x, txt)
  ours = {
    "x": gx,
    "text": gt,
    "to_q": gp["blocks"]["attn1"]["to_q"]["kernel"][...][1],
    "ffn_in": gp["blocks"]["ffn"]["proj_in"]["kernel"][...][1],
    "table": gp["scale_shift_table"][...],
  }
  return {name: rel_err(ours[name], ref) for name, ref in t_grads.items()}


def test_gradients_match_torch_autograd(pair):
  cfg, tm, model = pair
  for name, err in gradient_errors(cfg, tm, model).items():
    assert err <= 1e-4, (name, err)


def _j(a):
  return None if a is None else jnp.asarray(a)


def _split_from(tm, cfg):
  """Loads torch weights without going through disk (still via the strict key map)."""
  from pose_jax.convert import strict
  from pose_jax.convert.wan_diffusers import _stacked, key_map
  from pose_jax.models.wan import WanTransformer

  model = WanTransformer(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  targets = strict.flat_shapes(state)
  items = ((k, v.detach().numpy()) for k, v in tm.state_dict().items())
  bufs = strict.fill(items, targets, key_map, _stacked(targets, cfg.num_layers))
  flat = {tuple(str(k) for k in p): v for p, v in nnx.to_flat_state(state)}
  for p, b in bufs.items():
    flat[p].set_value(jnp.asarray(b))
  return graphdef, state
