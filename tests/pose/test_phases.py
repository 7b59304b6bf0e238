"""The phase records: the groups each phase trains (= the groups its loss gives a gradient), and
its DiT passes (= the DiT calls its loss makes), per phase and knob."""

import collections
import dataclasses

import jax
import jax.extend
import pytest

from pose_jax.aot import flops
from pose_jax.models.wan import preset
from pose_jax.pose import config, context, generator, phases, velocity
from pose_jax.pose import models as pose_models
from pose_jax.pose.config import PoseConfig
from pose_jax.pose.phases import PHASES, LossContext
from pose_jax.training import optim, steps
from tests.helpers import tiny

CFG = preset("tiny", num_layers=2)
KNOBS = PoseConfig(lora_rank=2, d_width=16, d_heads=2, d_num_queries=2, steps=(3, 3))
JOINT_COPY = dict(joint=True, d_backbone="trainable_copy")


@pytest.fixture(scope="module")
def setup():
  models, teacher, lora, head = pose_models.build(CFG, KNOBS)
  batch = tiny.dit_batch()
  params = {"student": teacher, "lora": lora, "head": head, "backbone": teacher}
  return models, teacher, params, batch


def test_one_record_per_configurable_phase_and_one_error_for_the_rest():
  assert tuple(PHASES) == config.PHASES
  msg = r"unknown phase 'distill'; choose from \['equilibrium', 'pretrain', 'priming'\]"
  for call in (
    lambda: phases.get("distill"),
    lambda: optim.trained_groups("distill"),
    lambda: steps.make_step("distill", KNOBS, None, None, 0, 1),
    lambda: flops.phase_passes("distill", KNOBS),
  ):
    with pytest.raises(ValueError, match=msg):
      call()


@pytest.mark.parametrize(
  "phase,knobs,groups",
  [
    ("pretrain", {}, ("student",)),
    ("pretrain", JOINT_COPY, ("student",)),
    ("priming", {}, ("student", "lora")),
    ("priming", JOINT_COPY, ("student", "lora")),
    ("equilibrium", {}, ("student", "head")),
    ("equilibrium", dict(joint=True), ("student", "head", "lora")),
    ("equilibrium", dict(d_backbone="trainable_copy"), ("student", "head", "backbone")),
    ("equilibrium", JOINT_COPY, ("student", "head", "lora", "backbone")),
  ],
)
def test_groups_per_phase_and_knob(phase, knobs, groups):
  knobs = dataclasses.replace(KNOBS, **knobs)
  assert PHASES[phase].trains(knobs) == groups
  assert optim.trained_groups(phase, knobs) == groups
  three = dataclasses.replace(knobs, fake_updates_per_step=3)  # two extra LoRA-only updates
  assert PHASES[phase].extra_fake_updates(three) == (2 if "lora" in groups else 0)


def _is_zero(var, producers) -> bool:
  """Whether a jaxpr variable is a constant zero (how ``jax.grad`` instantiates the gradient of
  an input no path reaches: unused, or cut by ``stop_gradient``)."""
  if isinstance(var, jax.extend.core.Literal):
    return var.val == 0
  eqn = producers.get(var)
  if eqn is None or eqn.primitive.name not in ("broadcast_in_dim", "convert_element_type"):
    return False
  return _is_zero(eqn.invars[0], producers)


@pytest.mark.parametrize(
  "phase,knobs",
  [("pretrain", {}), ("priming", {}), ("equilibrium", {}), ("equilibrium", JOINT_COPY)],
)
def test_trained_groups_are_those_the_loss_reaches(setup, phase, knobs):
  """A group a record lists but its loss never reaches (or the reverse) fails here. Read off
  the traced gradient (nothing is compiled): a group is reached unless all its gradients are
  constant zeros."""
  models, teacher, params, batch = setup
  knobs = dataclasses.replace(KNOBS, **knobs)
  ctx = lambda: LossContext(models=models, knobs=knobs, teacher=teacher, ema=teacher)
  loss = lambda p: PHASES[phase].loss(p, batch, jax.random.key(1), ctx())[0]
  jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
  producers = {v: eqn for eqn in jaxpr.eqns for v in eqn.outvars}
  grads = jax.tree.unflatten(jax.tree.structure(params), jaxpr.outvars)
  reached = {
    g for g, tree in grads.items() if not all(_is_zero(v, producers) for v in jax.tree.leaves(tree))
  }
  assert reached == set(PHASES[phase].trains(knobs))


def _count_dit_calls(monkeypatch, models, fn):
  """``{dit | lora | taps: calls}`` of the DiT while tracing ``fn`` (nothing is computed)."""
  calls = collections.Counter()
  real = velocity.dit_forward

  def counted(graphdef, params, x, t, cond, text, image, taps=()):
    calls["taps" if taps else "lora" if graphdef == models.dit_lora else "dit"] += 1
    return real(graphdef, params, x, t, cond, text, image, taps)

  monkeypatch.setattr(context, "dit_forward", counted)
  monkeypatch.setattr(generator, "dit_forward", counted)
  monkeypatch.setattr(velocity, "dit_forward", counted)
  jax.eval_shape(fn)
  return dict(calls)


@pytest.mark.parametrize(
  "phase,knobs,passes",
  [
    ("pretrain", {}, {"dit": 1}),
    ("priming", {}, {"dit": 1 + 2, "lora": 1}),  # G, R with CFG (cond + uncond), F
    ("priming", dict(cfg_real=1.0), {"dit": 2, "lora": 1}),
    ("equilibrium", {}, {"dit": 1 + 1, "taps": 3}),  # G, C-SDS teacher; D on fake/real/pert
    ("equilibrium", dict(lam_cons=0.0, cons_cfg=3.0), {"dit": 1, "taps": 3}),
    ("equilibrium", dict(cons_cfg=3.0), {"dit": 1 + 2, "taps": 3}),
    ("equilibrium", dict(d_backbone="trainable_copy"), {"dit": 2, "taps": 4}),
    ("equilibrium", dict(joint=True), {"dit": 2 + 2, "lora": 1, "taps": 3}),
    ("equilibrium", dict(student_steps=3), {"dit": 2 + 1 + 1, "taps": 3}),  # + backward sim.
  ],
)
def test_passes_are_the_dit_calls_of_the_loss(setup, monkeypatch, phase, knobs, passes):
  models, teacher, params, batch = setup
  knobs = dataclasses.replace(KNOBS, **knobs)
  record = PHASES[phase]
  rows = collections.Counter()
  for _, count, model, _ in record.passes(knobs):
    rows[model] += count
  assert dict(rows) == passes
  ctx = LossContext(models=models, knobs=knobs, teacher=teacher, ema=teacher)
  loss = lambda: record.loss(params, batch, jax.random.key(0), ctx)
  assert _count_dit_calls(monkeypatch, models, loss) == passes
  assert flops.phase_passes(phase, knobs) == record.passes(knobs)


@pytest.mark.parametrize("phase,knobs", [("priming", {}), ("equilibrium", dict(joint=True))])
def test_extra_fake_update_passes(setup, monkeypatch, phase, knobs):
  """Each extra LoRA update: one G sample (no gradient) and one F pass with LoRA gradients."""
  models, teacher, params, batch = setup
  knobs = dataclasses.replace(KNOBS, fake_updates_per_step=3, **knobs)
  record = PHASES[phase]
  base = record.passes(dataclasses.replace(knobs, fake_updates_per_step=1))
  extra = [r for r in record.passes(knobs) if r not in base]
  assert extra == [
    ("G for extra fake updates", 2, "dit", "none"),
    ("F extra fake updates", 2, "lora", "lora"),
  ]
  ctx = LossContext(models=models, knobs=knobs, teacher=teacher, ema=teacher)
  fake = lambda: phases.fake_score_loss(params, batch, jax.random.key(0), ctx, sample=record.sample)
  assert _count_dit_calls(monkeypatch, models, fake) == {"dit": 1, "lora": 1}
