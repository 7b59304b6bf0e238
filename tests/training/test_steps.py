"""The fused POSE steps: label tree, what each step changes, stop-gradients, NaN guard, sharding."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.common import optim_group
from pose_jax import sharding as shd
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


def _optim_config(lr=1e-3):
  c = ml_collections.ConfigDict()
  for g in optim.GROUPS:
    c[g] = optim_group(lr=lr, warmup_steps=0, b2=0.99)
  c.freeze = ()
  return c


@pytest.fixture(scope="module")
def setup():
  models, teacher, lora, head = pose_models.build(CFG, KNOBS)
  batch = tiny.dit_batch()
  return models, teacher, lora, head, batch


def _state(setup, phase, lr=1e-3, knobs=KNOBS):
  _, teacher, lora, head, _ = setup
  tx = optim.make_optimizer(_optim_config(lr), phase, 3, knobs)
  return state_lib.init_state(tx, teacher, lora, head, knobs, seed=1), tx


def _changed(a, b):
  return any(
    float(jnp.abs(x - y).max()) > 0 for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def test_label_tree_per_phase(setup):
  state, _ = _state(setup, "priming")
  lab = optim.labels(state.params, "priming", freeze=("student/patch_embedding",))
  flat = {shd.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(lab)[0]}
  assert flat["student/blocks/attn1/to_q/kernel"] == "student"
  assert flat["student/patch_embedding/kernel"] == "frozen"
  assert flat["lora/blocks/attn1/to_q/lora_a"] == "lora"
  assert set(v for k, v in flat.items() if k.startswith("head/")) == {"frozen"}
  eq = optim.labels(state.params, "equilibrium")
  eq_flat = {shd.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(eq)[0]}
  assert eq_flat["head/queries"] == "head" and eq_flat["lora/blocks/ffn/proj_in/lora_b"] == "frozen"


@pytest.mark.parametrize(
  "phase,moves,still",
  [
    ("pretrain", ["student"], ["lora", "head"]),
    ("priming", ["student", "lora"], ["head"]),
    ("equilibrium", ["student", "head"], ["lora"]),
  ],
)
def test_one_fused_step_changes_exactly_its_params(setup, phase, moves, still):
  models, teacher, _, _, batch = setup
  state, tx = _state(setup, phase)
  teacher_before = jax.tree.map(jnp.copy, teacher)
  step = jax.jit(steps.make_step(phase, KNOBS, models, tx, 0, 3))
  new, metrics = step(state, teacher, batch)
  assert bool(metrics["finite"]) and int(new.step) == 1
  for g in moves:
    assert _changed(new.params[g], state.params[g]), g
  for g in still:
    assert not _changed(new.params[g], state.params[g]), g
  assert not _changed(teacher, teacher_before)
  # EMA moved by (1 - decay) towards the new student.
  expect = optax.incremental_update(new.params["student"], state.ema, 1 - KNOBS.ema_decay)
  for a, b in zip(jax.tree.leaves(new.ema), jax.tree.leaves(expect)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _adam_count(opt_state, group) -> int:
  adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  inner = opt_state.inner_states[group].inner_state
  return int([x for x in jax.tree.leaves(inner, is_leaf=adam) if adam(x)][0].count)


@pytest.mark.parametrize(
  "knobs,moves,still",
  [
    (
      dataclasses.replace(KNOBS, joint=True, fake_updates_per_step=3),
      ["student", "head", "lora"],
      [],
    ),
    (
      dataclasses.replace(KNOBS, d_backbone="trainable_copy"),
      ["student", "head", "backbone"],
      ["lora"],
    ),
  ],
  ids=["joint", "trainable_copy"],
)
def test_equilibrium_variants_train_their_groups(setup, knobs, moves, still):
  models, teacher, _, _, batch = setup
  state, tx = _state(setup, "equilibrium", knobs=knobs)
  assert ("backbone" in state.params) == (knobs.d_backbone == "trainable_copy")
  new, metrics = jax.jit(steps.make_step("equilibrium", knobs, models, tx, 0, 3))(
    state, teacher, batch
  )
  assert bool(metrics["finite"])
  assert ("loss/dmd" in metrics) == knobs.joint and ("loss/fake" in metrics) == knobs.joint
  if knobs.joint:  # with fake_updates_per_step=3: two LoRA-only updates + the fused one
    assert "loss/fake_extra" in metrics and _adam_count(new.opt_state, "lora") == 3
    assert _adam_count(new.opt_state, "student") == 1
  for g in moves:
    assert _changed(new.params[g], state.params[g]), g
  for g in still:
    assert not _changed(new.params[g], state.params[g]), g


def test_trainable_backbone_gets_only_discriminator_gradient(setup):
  models, teacher, lora, head, batch = setup
  knobs = dataclasses.replace(KNOBS, d_backbone="trainable_copy", lam_cons=0.0)
  perturb = lambda t: jax.tree.map(lambda a: a * 1.01, t)  # (backbone != student)
  params = {"student": teacher, "lora": lora, "head": head, "backbone": perturb(teacher)}
  key = jax.random.key(5)

  def term(name):
    ctx = LossContext(models=models, knobs=knobs, teacher=teacher, ema=teacher)
    return lambda p: phases.equilibrium_loss(p, batch, key, ctx)[1][name]

  names = ("loss/g_adv", "loss/d", "loss/r1")
  g_adv, g_d, g_r1 = jax.jit(lambda p: [jax.grad(term(n))(p) for n in names])(params)
  norm = lambda t: float(optax.tree.norm(t))
  assert norm(g_adv["student"]) > 0 and norm(g_adv["backbone"]) == 0 and norm(g_adv["head"]) == 0
  assert norm(g_d["backbone"]) > 0 and norm(g_d["head"]) > 0 and norm(g_d["student"]) == 0
  assert norm(g_r1["backbone"]) > 0


def test_extra_fake_updates_advance_only_the_lora(setup):
  """Priming with fake_updates_per_step=3 (the equilibrium+joint case is in the test above)."""
  models, teacher, _, _, batch = setup
  knobs = dataclasses.replace(KNOBS, fake_updates_per_step=3)
  state, tx = _state(setup, "priming", knobs=knobs)
  new, metrics = jax.jit(steps.make_step("priming", knobs, models, tx, 0, 3))(state, teacher, batch)
  assert bool(metrics["finite"]) and "loss/fake_extra" in metrics
  assert _adam_count(new.opt_state, "lora") == 3  # two LoRA-only updates + the fused one
  assert _adam_count(new.opt_state, "student") == 1 and _changed(
    new.params["student"], state.params["student"]
  )


def test_stop_gradients_of_equilibrium(setup):
  models, teacher, lora, head, batch = setup
  params = {"student": teacher, "lora": lora, "head": head}
  knobs = PoseConfig(
    lora_rank=2, d_width=16, d_heads=2, d_num_queries=2, steps=(3, 3), lam_r1=0.0, lam_cons=0.0
  )
  key = jax.random.key(3)

  def term(name, wrt):
    def f(p, teacher, ema):
      ctx = LossContext(models=models, knobs=knobs, teacher=teacher, ema=ema)
      return phases.equilibrium_loss(p, batch, key, ctx)[1][name]

    return jax.jit(jax.grad(f, argnums=wrt))(params, teacher, teacher)

  norm = lambda t: float(optax.tree.norm(t))
  g_params, g_teacher, g_ema = term("loss/g_adv", (0, 1, 2))
  assert norm(g_params["student"]) > 0  # the generator learns through the fake sample
  assert norm(g_params["head"]) == 0  # ... and the head gets nothing from the generator loss
  assert norm(g_teacher) == 0 and norm(g_ema) == 0  # E and R weights: no gradient
  g_params, g_ema = term("loss/d", (0, 2))
  assert norm(g_params["head"]) > 0 and norm(g_params["student"]) == 0 and norm(g_ema) == 0


def test_stop_gradients_of_priming(setup):
  models, teacher, lora, head, batch = setup
  params = {"student": teacher, "lora": lora, "head": head}
  key = jax.random.key(4)

  def term(name):
    f = lambda p, r: phases.priming_loss(p, batch, key, LossContext(models, KNOBS, r))[1][name]
    return jax.jit(jax.grad(f, argnums=(0, 1)))(params, teacher)

  norm = lambda t: float(optax.tree.norm(t))
  g, g_teacher = term("loss/dmd")
  assert norm(g["student"]) > 0 and norm(g["lora"]) == 0 and norm(g_teacher) == 0
  g, g_teacher = term("loss/fake")
  assert norm(g["lora"]) > 0 and norm(g["student"]) == 0 and norm(g_teacher) == 0


def test_non_finite_batch_skips_the_update(setup):
  models, teacher, _, _, batch = setup
  state, tx = _state(setup, "pretrain")
  step = jax.jit(steps.make_step("pretrain", KNOBS, models, tx, 0, 3))
  bad = dict(batch, latents=batch["latents"].at[0, 0, 0, 0, 0].set(jnp.nan))
  new, metrics = step(state, teacher, bad)
  assert not bool(metrics["finite"]) and int(new.skipped) == 1 and int(new.bad_steps) == 1
  assert not _changed(new.params, state.params) and not _changed(new.ema, state.ema)
  new2, _ = step(new, teacher, batch)
  assert int(new2.bad_steps) == 0 and _changed(new2.params["student"], state.params["student"])


def test_gradient_accumulation_averages_micro_batch_gradients(setup):
  models, teacher, _, _, batch = setup
  state, tx = _state(setup, "pretrain")
  acc = steps.make_step("pretrain", KNOBS, models, tx, 0, 3, micro_batches=2)
  _, metrics = jax.jit(acc)(state, teacher, batch)
  # Independent recomputation: micro-batch i uses fold_in(step key, i); loss and grads average.
  _, key = jax.random.split(state.rng)

  def micro(i):
    half = jax.tree.map(lambda a: a[i : i + 1], batch)
    ctx = LossContext(models=models, knobs=KNOBS, teacher=teacher)
    f = lambda p: phases.pretrain_loss(p, half, jax.random.fold_in(key, i), ctx)[0]
    return jax.value_and_grad(f)(state.params)

  (l0, g0), (l1, g1) = jax.jit(lambda: (micro(0), micro(1)))()
  np.testing.assert_allclose(metrics["loss/flow"], (l0 + l1) / 2, rtol=1e-5)
  mean_grad = jax.tree.map(lambda a, b: (a + b) / 2, g0["student"], g1["student"])
  np.testing.assert_allclose(metrics["grad_norm/student"], optax.tree.norm(mean_grad), rtol=1e-5)
  assert abs(float(l0) - float(l1)) > 1e-4  # the two halves really differ


def test_sharded_step_equals_unsharded(setup):
  models, teacher, _, _, batch = setup
  state, tx = _state(setup, "priming")
  step = steps.make_step("priming", KNOBS, models, tx, 0, 3)
  batch = jax.tree.map(lambda a: jnp.concatenate([a] * 4), batch)  # 8 = data x fsdp
  ref_state, ref_metrics = jax.jit(step)(state, teacher, batch)
  mesh = shd.make_mesh((2, 4, 1, 1))
  batch_sharding = jax.sharding.NamedSharding(mesh, shd.logical_to_spec((shd.ACT_BATCH,)))
  with shd.use_mesh(mesh):

    def put(tree):
      return jax.device_put(tree, shd.state_shardings(tree, mesh))

    sharded = state_lib.TrainState(
      step=state.step,
      params={k: put(v) for k, v in state.params.items()},
      ema=put(state.ema),
      opt_state=state.opt_state,
      rng=state.rng,
      bad_steps=state.bad_steps,
      skipped=state.skipped,
    )
    b = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
    out_state, metrics = jax.jit(step)(sharded, put(teacher), b)
  q = out_state.params["student"]["blocks"]["attn1"]["to_q"]["kernel"][...]
  assert q.addressable_shards[0].data.shape == (2, 32 // 4, 32)  # stays FSDP-sharded
  for key in ("loss/dmd", "loss/fake", "grad_norm/student", "grad_norm/lora"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5)
  # Adam divides by sqrt(v): where a gradient is ~0, float reordering across shards can move
  # that coordinate by a visible fraction of one lr-sized step, so compare at 5% of lr.
  for a, r in zip(jax.tree.leaves(out_state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(a, r, rtol=0, atol=5e-5)


def test_lr_by_phase_overrides_the_group_lr():
  c = _optim_config(1e-3)
  c.student.lr_by_phase = {"equilibrium": 2e-4}
  assert optim._for_phase(c.student, "equilibrium", "student").lr == 2e-4
  assert optim._for_phase(c.student, "priming", "student").lr == 1e-3
  c.student.lr_by_phase = {"equilibrum": 2e-4}
  with pytest.raises(ValueError, match=r"student.lr_by_phase: unknown phases \['equilibrum'\]"):
    optim.make_optimizer(c, "priming", 3)


def test_text_dropout_swaps_whole_prompts_for_the_negative_one():
  b = 64
  batch = {"text": jnp.ones((b, 3, 4)), "neg_text": jnp.zeros((b, 3, 4))}
  text = phases._drop_text(batch, jax.random.key(0), 0.25)
  per_sample = np.asarray(text).reshape(b, -1)
  assert set(np.unique(per_sample.mean(axis=1))) == {0.0, 1.0}  # whole prompts, never mixed
  assert 5 < int((per_sample[:, 0] == 0).sum()) < 30  # ~16 of 64 dropped
  assert phases._drop_text(batch, jax.random.key(0), 0.0) is batch["text"]


@pytest.mark.parametrize(
  "previous,phase,knob,rebased",
  [
    ("pretrain", "priming", True, True),
    ("pretrain", "equilibrium", False, True),
    ("priming", "equilibrium", True, True),
    ("priming", "equilibrium", False, False),
  ],
)
def test_entering_a_phase_rebases_e_and_the_backbone_on_the_student(
  setup, previous, phase, knob, rebased
):
  """After pretrain (E and a trainable backbone would otherwise still hold the random init) and,
  with ``rebase_on_primed``, at priming -> equilibrium, E and the backbone restart as the
  student; the student itself and the LoRA stay."""
  _, teacher, lora, head, _ = setup
  knobs = dataclasses.replace(KNOBS, d_backbone="trainable_copy", rebase_on_primed=knob)
  assert state_lib.rebases(previous, phase, knobs) == rebased
  state, _ = _state(setup, previous, knobs=knobs)
  student = jax.tree.map(lambda a: a * 1.1, state.params["student"])  # moved away from E
  state = state.replace(params={**state.params, "student": student})
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1, 1), shd.MESH_AXES)
  tx = optim.make_optimizer(_optim_config(), phase, 3, knobs)
  target = state_lib.abstract_state(tx, teacher, lora, head, knobs, 1, mesh)
  new = state_lib.next_phase(jax.tree.map(jnp.copy, state), tx, target, rebased)
  assert not _changed(new.params["student"], student)
  assert not _changed(new.params["lora"], state.params["lora"])
  for tree in (new.ema, new.params["backbone"]):
    assert _changed(tree, student) != rebased


def test_each_phase_schedule_spans_that_phase():
  """A cosine schedule reaches ``lr * final_frac`` at the end of its own phase (the optimizer
  count restarts each phase, so a horizon of the whole run would stop half-way)."""
  from pose_jax.training import train

  c = ml_collections.ConfigDict()
  c.optim = _optim_config()
  for g in optim.GROUPS:
    c.optim[g].update(decay="cosine", final_frac=0.1, clip=0.0, weight_decay=0.0)
  plan = [("priming", 0, 10), ("equilibrium", 10, 30)]
  tx = train._optimizer(c, plan, 1, KNOBS)
  params = {g: {"w": jnp.ones(3)} for g in ("student", "lora", "head")}
  grads = jax.tree.map(jnp.ones_like, params)
  opt_state = tx.init(params)
  for _ in range(20):
    updates, opt_state = tx.update(grads, opt_state, params)
  last = float(jnp.abs(updates["student"]["w"][0]))  # Adam on a constant gradient: the lr
  assert last == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 19 / 20))), rel=1e-3)


def test_s_lo_curriculum_follows_the_phase_fraction(setup, monkeypatch):
  """Phase I's generator input times lie in [s_lo_at(frac), 1], frac counted from the phase's
  own first step: at its start all >= s_lo, at its end down to s_lo_end."""
  models, teacher, _, _, batch = setup
  knobs = dataclasses.replace(KNOBS, s_lo=0.9, s_lo_end=0.2)
  state, tx = _state(setup, "priming", knobs=knobs)
  big = jax.tree.map(lambda a: jnp.concatenate([a] * 16), batch)
  seen = []
  real = phases.context.denoise

  def recorded(params, batch, x_t, t, ctx):
    seen.append(np.asarray(t))
    return real(params, batch, x_t, t, ctx)

  monkeypatch.setattr(phases.context, "denoise", recorded)
  step = steps.make_step("priming", knobs, models, tx, 100, 10)  # eager: t is recorded
  lows = []
  for at in (100, 110):
    seen.clear()
    step(state.replace(step=jnp.int32(at)), teacher, big)
    lows.append(float(seen[0].min()))
  assert lows[0] >= 0.9 and lows[1] < 0.6, lows


def test_fingerprint_hashes_shards_where_they_are():
  """An FSDP-sharded tree is fingerprinted shard by shard (no whole-array fetch): the same
  values give the same digest, one changed element or a changed dtype another."""
  from pose_jax.training import train

  mesh = shd.make_mesh((1, 8, 1, 1))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
  a = jax.device_put(jnp.arange(64.0).reshape(16, 4), sharding)
  tree = {"w": a, "b": jnp.ones(3)}
  assert len({str(s.index) for s in a.addressable_shards}) == 8  # really sharded
  same = {"w": jax.device_put(jnp.arange(64.0).reshape(16, 4), sharding), "b": jnp.ones(3)}
  assert train.fingerprint(tree) == train.fingerprint(same)
  assert train.fingerprint(tree) != train.fingerprint({**tree, "w": a.at[15, 3].add(1.0)})
  assert train.fingerprint(tree) != train.fingerprint({**tree, "b": jnp.ones(3, jnp.int32)})
