"""Ahead-of-time TPU compiles (``python -m pose_jax.aot``) from this CPU host.

They run in the separate jax[tpu] venv ``.venv-tpu`` (``.ci/run`` builds it); skipped, with the
reason, when it or libtpu is missing.
"""

import json
import os
import re
import subprocess

import pytest

from pose_jax.aot import topology
from tests.helpers import ROOT

TPU_PYTHON = os.path.join(ROOT, ".venv-tpu", "bin", "python")


def _tpu_python():
  if not os.path.exists(TPU_PYTHON):
    pytest.skip(f"{TPU_PYTHON} missing (build it: see requirements-tpu.txt / .ci/run)")
  r = subprocess.run([TPU_PYTHON, "-c", "import libtpu"], capture_output=True, text=True)
  if r.returncode:
    pytest.skip(f"libtpu cannot be imported in .venv-tpu: {r.stderr.strip()[-300:]}")
  return TPU_PYTHON


def _compile(*flags, timeout=600):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  return subprocess.run(
    [_tpu_python(), "-m", "pose_jax.aot", *flags],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _report(tmp_path, *flags) -> dict:
  """The JSON report of a compile that must succeed."""
  out = tmp_path / "report.json"
  r = _compile(*flags, f"--out={out}")
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  return json.loads(out.read_text())


def test_topology_names():
  t = topology.parse_topology("v5p-64")
  assert (t.topology_name, t.chips, t.devices, t.chip.chip_config) == (
    "v5:2x4x4",
    32,
    32,
    "megacore",
  )
  t = topology.parse_topology("v6e-256")
  assert (t.topology_name, t.devices, t.wrap, t.hosts) == (
    "v6e:16x16",
    256,
    (True, True, False),
    64,
  )
  assert topology.parse_topology("v4-8").topology_name == "v4:2x2x1"
  assert topology.parse_topology("tpu7x-8").devices == 8  # 4 chips, 2 devices each
  with pytest.raises(ValueError, match="unknown topology 'v5p-63'; known: .*v5p-64"):
    topology.parse_topology("v5p-63")


def test_toy_config_compiles_every_phase_for_a_tpu_slice(tmp_path):
  report = _report(
    tmp_path,
    "--config=configs/toy_i2v.py:scratch",  # every phase
    "--topology=v6e-8",
    "--config.model.attention=splash",  # the Pallas TPU kernel compiles at toy sizes too
    "--config.mesh.shape=(1,-1,1,1)",  # FSDP, as the real config
    "--config.model.num_layers=2",  # taps (0, 1): fewer scan segments, a faster compile
  )
  assert report["topology"]["devices"] == 8 and report["topology"]["device_kind"] == "TPU v6 lite"
  assert set(report["phases"]) == {"pretrain", "priming", "equilibrium", "sample"}
  assert report["flops_convention"] == "analytic-mfu (see pose_jax.aot.flops)"
  assert report["config"]["height"] == report["config"]["width"] == 32  # toy: data.size
  for name, p in report["phases"].items():
    assert p["fits"], name
    for key in ("argument_bytes", "output_bytes", "peak_bytes", "model_flops"):
      assert p[key] > 0, (name, key)
    assert 0 < p["peak_gib"] < p["hbm_gib"]
    assert p["step_s_at_40pct_mfu"] > 0 and p["compile_s"] > 0
    assert p["roofline_step_s"] == max(p["roofline_compute_s"], p["roofline_hbm_s"]) > 0
  # Analytic counts: pretrain = forward + backward = 3 forwards of the sampler (same batch of 8);
  # priming adds the teacher's CFG pair and F's pass to G's forward + backward.
  flops = {k: v["model_flops"] for k, v in report["phases"].items()}
  assert report["phases"]["sample"]["batch"] == 8
  assert flops["pretrain"] == pytest.approx(3 * flops["sample"])
  assert flops["priming"] > 2 * flops["pretrain"]


def test_context_parallelism_splits_each_devices_attention(tmp_path):
  # One 480p 14B layer over v6e-8 as (data 1, fsdp 2, context 4, tensor 1), read off the
  # compiled program: Ulysses self-attention runs 40/4 heads on all 32760 video tokens (padded
  # to 32768), cross-attention (allgather) all 40 heads on 32760/4 of the queries (to 8192).
  # Before queries were split over context, every device's kernel ran 40 x 32768.
  report = _report(
    tmp_path,
    "--config=configs/wan_i2v.py",
    "--topology=v6e-8",
    "--phase=sample",
    "--config.model.num_layers=1",
    "--config.mesh.shape=(1,2,4,1)",
    "--config.train.batch_size=8",
    "--config.train.micro_batches=1",
    "--config.model.context_parallel=ulysses",
  )
  assert report["config"]["context_parallel"] == "ulysses"
  got = {(k["heads"], k["queries"]) for k in report["phases"]["sample"]["splash_per_device"]}
  assert got == {(10, 32768), (40, 8192)}


def test_two_slices_put_data_parallelism_across_them(tmp_path):
  report = _report(
    tmp_path,
    "--config=configs/toy_i2v.py",
    "--topology=v5p-8",
    "--config.mesh.slices=2",
    "--config.mesh.shape=(1,-1,1,1)",
    "--phase=sample",
  )
  assert report["topology"]["slices"] == 2 and report["topology"]["devices"] == 8
  assert report["config"]["mesh"] == dict(data=2, fsdp=4, context=1, tensor=1)


@pytest.mark.parametrize(
  "flag,message",
  [
    ("--topology=v5p-63", "error: --topology=v5p-63: unknown topology 'v5p-63'"),
    ("--phase=sample,bogus", "error: --phase ['bogus'] not in this config's"),
  ],
)
def test_bad_flags_exit_2_naming_them(flag, message):
  r = _compile("--config=configs/toy_i2v.py", flag, timeout=300)
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
  assert r.stderr.strip().splitlines()[-1].startswith(message), r.stderr[-3000:]


def test_a_config_that_does_not_suit_the_topology_exits_2_naming_the_key():
  # 480p's 2 micro-batches of 32 clips cannot split over the 64 chips of a v5p-128's fsdp.
  r = _compile("--config=configs/wan_i2v.py", "--topology=v5p-128", "--phase=sample")
  assert r.returncode == 2, r.stderr[-3000:]
  assert "error: config.train.micro_batches: 2" in r.stderr and "Traceback" not in r.stderr


def test_too_big_model_does_not_fit_and_names_buffers(tmp_path):
  # Wan2.1-I2V-14B's float32 weights replicated on every v5e chip (pure data parallelism).
  r = _compile(
    "--config=configs/wan_i2v.py",
    "--topology=v5e-8",
    "--phase=sample",
    "--config.mesh.shape=(-1,1,1,1)",
    "--config.train.batch_size=8",
    "--config.train.micro_batches=1",
    "--config.data.frames=5",
    f"--out={tmp_path / 'big.json'}",
  )
  assert r.returncode != 0
  assert "'sample' does not fit on v5e-8" in r.stderr, r.stderr[-3000:]
  assert "RESOURCE_EXHAUSTED" in r.stderr, r.stderr[-3000:]
  # The largest buffers are named: XLA's own list, or the largest per-device inputs.
  assert re.search(r"GiB +student/blocks/ffn/proj_(in|out)/kernel float32", r.stderr), r.stderr[
    -3000:
  ]
  report = json.loads((tmp_path / "big.json").read_text())
  assert report["phases"]["sample"]["fits"] is False
