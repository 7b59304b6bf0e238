"""``pose.teacher_dtype``: the frozen teacher stored in bf16 (``pose_models.stored_teacher``)."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.common import optim_group
from pose_jax import sharding as shd
from pose_jax.models.wan import preset
from pose_jax.pose import models as pose_models
from pose_jax.pose.config import FieldError, PoseConfig
from pose_jax.training import optim, steps
from pose_jax.training import state as state_lib
from tests.helpers import tiny

CFG = preset("tiny", num_layers=1)  # one block: the test compiles two steps
KNOBS = PoseConfig(lora_rank=2, d_width=16, d_heads=2, d_num_queries=2, steps=(3, 3), d_layers=(0,))
BF16 = dataclasses.replace(KNOBS, teacher_dtype="bfloat16")


def test_casts_floating_leaves_and_keeps_shardings():
  mesh = shd.make_mesh((1, 1, 1, 1), jax.devices()[:1])
  _, abstract, _, _ = pose_models.build(CFG, KNOBS, 0, mesh, abstract=True)
  _, teacher, _, _ = pose_models.build(CFG, KNOBS, 0, mesh)
  for tree in (abstract, teacher):
    cast = pose_models.stored_teacher(tree, BF16)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(cast)):
      assert b.dtype == (jnp.bfloat16 if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype)
      assert b.shape == a.shape and b.sharding == a.sharding
    same = pose_models.stored_teacher(tree, KNOBS)  # float32: unchanged
    assert all(a is b for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(same)))
  with pytest.raises(FieldError, match="teacher_dtype"):
    PoseConfig(teacher_dtype="float16")


def _optim(phase, knobs):
  c = ml_collections.ConfigDict()
  for g in optim.GROUPS:
    c[g] = optim_group(lr=1e-3, warmup_steps=0, b2=0.99)
  c.freeze = ()
  return optim.make_optimizer(c, phase, 3, knobs)


def test_a_bf16_teacher_steps_like_the_fp32_one_with_half_its_bytes():
  """The same equilibrium step with the teacher in fp32 and in bf16, DMD2-style joint (R's CFG
  target and F's LoRA base) with the frozen teacher as D's backbone and C-SDS on, so every
  reader of the teacher runs: the losses agree to bf16 precision and the compiled step's
  arguments shrink by half the teacher's bytes."""
  phase = "equilibrium"
  batch = tiny.dit_batch()
  out = {}
  for name, knobs in (("fp32", KNOBS), ("bf16", BF16)):
    knobs = dataclasses.replace(knobs, d_backbone="frozen_teacher", joint=True)
    models, teacher, lora, head = pose_models.build(CFG, knobs)
    tx = _optim(phase, knobs)
    state = state_lib.init_state(tx, teacher, lora, head, knobs, seed=1)
    stored = pose_models.stored_teacher(teacher, knobs)
    step = jax.jit(steps.make_step(phase, knobs, models, tx, 0, 3))
    compiled = step.lower(state, stored, batch).compile()
    _, metrics = compiled(state, stored, batch)
    out[name] = (metrics, compiled.memory_analysis().argument_size_in_bytes)
  teacher_bytes = sum(x.nbytes for x in jax.tree.leaves(teacher))
  (m32, arg32), (m16, arg16) = out["fp32"], out["bf16"]
  assert bool(m16["finite"])
  np.testing.assert_equal(arg32 - arg16, teacher_bytes // 2)
  for k in (k for k in m32 if k.startswith("loss/")):
    np.testing.assert_allclose(float(m16[k]), float(m32[k]), rtol=0.05, atol=1e-3, err_msg=k)
