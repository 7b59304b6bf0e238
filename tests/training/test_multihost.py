"""Two JAX processes x 4 CPU devices (gloo collectives) train, checkpoint, restart and resume;
the run equals the one-process 8-device reference."""

import socket

import pytest

from tests.helpers import toy_runs as runs


@pytest.mark.slow
def test_two_processes_checkpoint_resume_and_equal_one_process(toy_reference_run, tmp_path):
  """2 processes x 4 CPU devices (gloo collectives): train, SIGKILL both after a checkpoint,
  restart both, resume; the run equals the single-process 8-device run."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]

  def start_both():  # the first start copies the reference's toy clips (each process its own)
    ref = toy_reference_run[0]
    return [runs.start(tmp_path, 4, i, 2, port, data_from=ref) for i in range(2)]

  procs = start_both()
  runs.wait_for_checkpoint(tmp_path, 4, procs)
  for p in procs:
    runs.kill(p)
  outs = [runs.finish(p) for p in start_both()]
  assert all("resumed from step" in o for o in outs)
  assert "process 1/2: 4 local of 8 devices" in outs[1]
  runs.assert_same_run(toy_reference_run[0], tmp_path, rtol=1e-5)
