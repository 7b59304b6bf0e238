"""``steps.fake_updates`` (``fake_updates_per_step > 1``): the extra LoRA-only updates match a
plain loop of full-tree optimizer updates, carry only the LoRA through their scan, and use the
step's micro-batches."""

import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.common import optim_group
from pose_jax.models.wan import preset
from pose_jax.pose import models as pose_models
from pose_jax.pose import phases
from pose_jax.pose.config import PoseConfig
from pose_jax.pose.phases import LossContext
from pose_jax.training import optim, steps
from pose_jax.training import state as state_lib
from tests.helpers import tiny

CFG = preset("tiny", num_layers=2)
KNOBS = PoseConfig(lora_rank=2, d_width=16, d_heads=2, d_num_queries=2, steps=(3, 3))


@pytest.fixture(scope="module")
def setup():
  models, teacher, lora, head = pose_models.build(CFG, KNOBS)
  c = ml_collections.ConfigDict()
  for g in optim.GROUPS:
    c[g] = optim_group(lr=1e-2, warmup_steps=0, b2=0.99)
  c.freeze = ()
  tx = optim.make_optimizer(c, "priming", 3, KNOBS)
  state = state_lib.init_state(tx, teacher, lora, head, KNOBS, seed=1)
  return models, teacher, tx, state, tiny.dit_batch()


def test_matches_a_loop_of_full_tree_updates(setup):
  """Three LoRA-only updates equal three ``tx.update`` calls on the whole trainable tree with
  only the LoRA's gradient non-zero (what the scan did before it carried only the LoRA)."""
  models, teacher, tx, state, batch = setup
  record, key, count = phases.get("priming"), jax.random.key(7), 3
  ctx = LossContext(models=models, knobs=KNOBS, teacher=teacher, ema=state.ema)
  run = lambda p, o: steps.fake_updates(record, tx, p, o, batch, key, ctx, count)
  params, opt_state, finite, losses = jax.jit(run)(state.params, state.opt_state)
  assert bool(finite) and losses.shape == (count,)

  p, o = state.params, state.opt_state
  for k in jax.random.split(key, count):
    f = lambda lora, p=p, k=k: phases.fake_score_loss(
      {**p, "lora": lora}, batch, k, ctx, sample=record.sample
    )
    g = jax.jit(jax.grad(f))(p["lora"])
    grads = {**jax.tree.map(jnp.zeros_like, p), "lora": g}
    updates, o = tx.update(grads, o, p)
    p = {**p, "lora": optax.apply_updates(p["lora"], updates["lora"])}
  # Adam divides by sqrt(v): jit-vs-eager rounding of tiny gradients shows in a parameter at
  # ~2e-6, so the moves are compared to the largest move of their leaf (1%), not to 1e-6.
  for a, b, a0 in zip(*(jax.tree.leaves(t) for t in (params, p, state.params))):
    scale = float(jnp.abs(b - a0).max())
    np.testing.assert_allclose(a - a0, b - a0, rtol=0, atol=max(1e-2 * scale, 1e-7))
  moved = jax.tree.map(
    lambda a, b: float(jnp.abs(a - b).max()), params["lora"], state.params["lora"]
  )
  assert max(jax.tree.leaves(moved)) > 0
  for a, b in zip(jax.tree.leaves(params["student"]), jax.tree.leaves(state.params["student"])):
    np.testing.assert_array_equal(a, b)


def _scans(jaxpr):
  """Every ``scan`` equation in ``jaxpr``, nested ones included, outermost first."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _scans(sub)


def _nbytes(avals) -> int:
  return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in avals)


def test_scan_carries_the_lora_and_uses_the_micro_batches(setup):
  """The fused priming step with ``fake_updates_per_step=4`` (3 extra updates) and 2
  micro-batches: the extra updates' scan (length 3) carries less than the student alone (the old
  scan carried every parameter and optimizer state), and inside it a length-2 scan (the
  micro-batches) runs the loss on one clip at a time."""
  models, teacher, tx, state, batch = setup
  knobs = dataclasses.replace(KNOBS, fake_updates_per_step=4)
  step = steps.make_step("priming", knobs, models, tx, 0, 3, micro_batches=2)
  jaxpr = jax.make_jaxpr(step)(state, teacher, batch).jaxpr
  (fake,) = [e for e in _scans(jaxpr) if e.params["length"] == 3]
  n_consts, n_carry = fake.params["num_consts"], fake.params["num_carry"]
  carry = [v.aval for v in fake.invars[n_consts : n_consts + n_carry]]
  student = _nbytes(jax.tree.leaves(state.params["student"]))
  lora = _nbytes(jax.tree.leaves(state.params["lora"]))
  assert lora <= _nbytes(carry) < student, (_nbytes(carry), lora, student)
  inner = list(_scans(fake.params["jaxpr"].jaxpr))
  micro = [e for e in inner if e.params["length"] == 2]
  assert micro, [e.params["length"] for e in inner]
  split = (2, 1, *batch["latents"].shape[1:])  # [micro-batches, clips each, T, H, W, Z]
  assert any(v.aval.shape == split for e in micro for v in e.invars), split
