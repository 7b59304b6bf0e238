"""``loop.run_phase`` on a stand-in step: what it reads from the device, and when."""

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pose_jax import sharding as shd
from pose_jax.training import loop


class _State(NamedTuple):  # a pytree with the attribute run_phase reads
  x: jax.Array
  bad_steps: jax.Array


class _Manager:
  """The CheckpointManager calls run_phase makes, recorded."""

  def __init__(self):
    self.saved = []

  def save(self, step, args, force=False):
    del args
    self.saved.append((step, force))

  def wait_until_finished(self):
    pass

  def latest_step(self):
    return self.saved[-1][0] if self.saved else None


def _run(tmp_path, step_fn, stop=3):
  mesh = shd.make_mesh((1, 1, 1, 1), jax.devices()[:1])
  batches = iter([{"latents": np.full((1, 2), i, np.float32)} for i in range(1, stop + 1)])
  ctx = loop.LoopContext(
    writer=loop.MetricWriter(str(tmp_path), tensorboard=False),
    mngr=_Manager(),
    data=batches,
    watch=loop.PreemptionWatch(),
    evals=None,
    mesh=mesh,
    log_every=2,
    max_bad_steps=3,
  )
  state = _State(x=jnp.zeros(()), bad_steps=jnp.zeros((), jnp.int32))
  try:
    out = loop.run_phase(
      ctx,
      "test",
      step_fn,
      state,
      None,
      ctx.next_batch(),
      start=0,
      stop=stop,
      meta={"phase_index": 0},
    )
  finally:
    ctx.watch.close()
  return out, ctx


def _step(state, teacher, batch):
  del teacher
  x = state.x + batch["latents"].sum()
  return _State(x=x, bad_steps=state.bad_steps), {"loss": x}


def test_steps_run_with_only_explicit_transfers(tmp_path):
  """Three steps; the metrics are read at log step 2 and the last step; each step checkpoints
  when due (forced at the end); every batch is used once, in order."""
  out, ctx = _run(tmp_path, jax.jit(_step))
  assert float(out.x) == 2 * (1 + 2 + 3)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in lines] == [2, 3]
  assert ctx.mngr.saved == [(1, False), (2, False), (3, True)]


def test_an_implicit_transfer_in_the_loop_is_an_error(tmp_path):
  """The loop runs under ``jax.transfer_guard("disallow")``: a step that round-trips its batch
  through the host (an implicit host-to-device copy) raises instead of silently stalling the
  dispatch. (On CPU JAX guards host-to-device copies only, device arrays being host memory; on
  TPU and GPU a device-to-host read such as ``int(state.step)`` raises as well.)"""

  def host_round_trip(state, teacher, batch):
    return jax.jit(_step)(state, teacher, {"latents": np.asarray(batch["latents"])})

  with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
    _run(tmp_path, host_round_trip)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped raise
def test_a_signal_whose_exception_python_dropped_is_still_acted_on():
  """A SIGTERM landing in a finalizer while idle (as while tracing a step): Python prints
  "Exception ignored" and drops ``Preempted``; the compile wait and ``busy`` still raise it, so no
  step runs after the signal."""
  import os
  import signal

  watch = loop.PreemptionWatch()
  try:
    watch.idle_at(4)

    class _Finalized:
      def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here; its raise is dropped

    _Finalized()
    assert watch.signalled == "SIGTERM"
    compiled = loop.compile_step("p", jax.jit(lambda x: x + 1), jnp.zeros(3), watch=watch)
    raise AssertionError(f"compiled {compiled} after a SIGTERM")
  except loop.Preempted as e:
    assert (e.step, e.signal_name) == (4, "SIGTERM")
  finally:
    watch.close()
  with pytest.raises(loop.Preempted):
    watch.busy()
