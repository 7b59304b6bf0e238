"""launch/xpk_train.sh: the xpk / kubectl commands it prints (--dry-run) and runs (fake xpk,
kubectl and gcloud on PATH recording their argv), and its input checks."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from tests.helpers.launch_env import ROOT, dry, gcloud_calls, sh

GKE = ["--cluster=pose-v5p", "--zone=us-east5-a", "--workload=pose480"]
CREATE = [*GKE, "--tpu-type=v5p-64", "--workdir=gs://my-bucket/runs/pose480"]
RECORDER = """#!{python}
import json, os, sys
with open(os.environ["FAKE_TOOLS_LOG"], "a") as f:
  f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
if sys.argv[1:3] == ["get", "pods"]:
  print("pod/pose480-slice-job-0-0")
"""


@pytest.fixture
def tools(env, tmp_path):
  """``env`` with fake xpk and kubectl beside the fake gcloud; returns (env, calls())."""
  bin_dir = tmp_path / "bin"
  for tool in ("xpk", "kubectl"):
    (bin_dir / tool).write_text(RECORDER.format(python=sys.executable))
    (bin_dir / tool).chmod(0o755)
  env = dict(env, FAKE_TOOLS_LOG=str(tmp_path / "tools.jsonl"))

  def calls():
    log = tmp_path / "tools.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

  return env, calls


def _command(create: list[str]) -> list[str]:
  (cmd,) = [a[len("--command=") :] for a in create if a.startswith("--command=")]
  return shlex.split(cmd)


def test_create_runs_the_trainer_on_every_host_as_train_sh_does(env):
  overrides = ["--config.ckpt.init_from=gs://my-bucket/teachers/wan", "--config.seed=3"]
  (create,) = dry(env, "xpk_train.sh", *CREATE, *overrides, "--env=XLA_FLAGS=--a --b", "--")
  assert create[:3] == ["xpk", "workload", "create"]
  for part in (
    "--cluster=pose-v5p",
    "--zone=us-east5-a",
    "--workload=pose480",
    "--tpu-type=v5p-64",
    "--num-slices=1",
    "--base-docker-image=python:3.11",
    f"--script-dir={ROOT}",
    "--env=PYTHONUNBUFFERED=1",
    "--env=XLA_FLAGS=--a --b",
    "--max-restarts=0",
    "--termination-grace-period-seconds=600",
    "--priority=medium",
  ):
    assert part in create, part
  words = _command(create)
  assert words[:8] == ["pip", "install", "-q", "-r", "requirements-tpu.txt", "-e", ".", "&&"]
  assert words[8:] == [
    "python",
    "-m",
    "pose_jax.main",
    "--config=configs/wan_i2v.py:480p",
    "--workdir=gs://my-bucket/runs/pose480",
    "--distributed=on",
    *overrides,
  ]
  # A prebuilt image: no install, no script dir; two slices, restarts, a 720p config.
  (create,) = dry(
    env,
    "xpk_train.sh",
    *CREATE,
    "--docker-image=gcr.io/p/pose:1",
    "--num-slices=2",
    "--max-restarts=3",
    "--config=configs/wan_i2v.py:720p",
    "--grace-seconds",
    "900",
  )
  assert "--docker-image=gcr.io/p/pose:1" in create and "--num-slices=2" in create
  assert not any(a.startswith(("--base-docker-image", "--script-dir")) for a in create)
  assert "--max-restarts=3" in create and "--termination-grace-period-seconds=900" in create
  assert _command(create)[:4] == [
    "python",
    "-m",
    "pose_jax.main",
    "--config=configs/wan_i2v.py:720p",
  ]


def test_logs_follow_and_delete_dry_runs(env):
  creds, wait, logs = dry(env, "xpk_train.sh", *GKE, "--logs", "--project=my-project")
  assert creds == [
    "gcloud",
    "container",
    "clusters",
    "get-credentials",
    "pose-v5p",
    "--region=us-east5",
    "--project=my-project",
  ]
  host0 = (
    "--selector=jobset.sigs.k8s.io/jobset-name=pose480,jobset.sigs.k8s.io/job-index=0,"
    "batch.kubernetes.io/job-completion-index=0"
  )
  assert wait[:3] == ["kubectl", "wait", "--for=condition=Ready"] and host0 in wait
  assert logs[:3] == ["kubectl", "logs", "--follow"] and host0 in logs
  *_, logs = dry(env, "xpk_train.sh", *GKE, "--logs", "--all-hosts")
  assert "--selector=jobset.sigs.k8s.io/jobset-name=pose480" in logs
  assert "--max-log-requests=64" in logs
  create, *rest = dry(env, "xpk_train.sh", *CREATE, "--follow")
  assert create[:3] == ["xpk", "workload", "create"] and [c[0] for c in rest] == [
    "gcloud",
    "kubectl",
    "kubectl",
  ]
  (delete,) = dry(env, "xpk_train.sh", *GKE, "--delete")
  assert delete == [
    "xpk",
    "workload",
    "delete",
    "--cluster=pose-v5p",
    "--zone=us-east5-a",
    "--workload=pose480",
    "--force",
  ]


def test_real_path_runs_the_printed_commands(tools):
  env, calls = tools
  r = sh(env, "xpk_train.sh", *CREATE, "--follow", "--config.seed=2")
  assert r.returncode == 0, r.stderr
  printed = [shlex.split(x[2:]) for x in r.stderr.splitlines() if x.startswith("+ ")]
  ran = calls()
  assert [c[0] for c in ran] == ["xpk", "kubectl", "kubectl", "kubectl"]  # get pods: scheduled
  assert ran[0] == printed[0] and ran[2:] == printed[2:]
  assert gcloud_calls(env) == [printed[1][1:]]
  r = sh(env, "xpk_train.sh", *GKE, "--delete")
  assert r.returncode == 0 and calls()[-1][:3] == ["xpk", "workload", "delete"]


BAD = [
  (CREATE[1:], "--cluster is required"),
  ([*CREATE, "--cluster=Pose_1"], "--cluster=Pose_1"),
  ([*GKE, "--workdir=gs://my-bucket/r"], "--tpu-type is required"),
  ([*GKE, "--tpu-type=v5p-63", "--workdir=gs://my-bucket/r"], "--tpu-type=v5p-63"),
  ([*GKE, "--tpu-type=v5e-16", "--workdir=gs://my-bucket/r"], "v5litepod-16"),
  ([*GKE, "--tpu-type=v5p-64", "--workdir=/tmp/run"], "--workdir=/tmp/run: must be gs://"),
  ([*GKE[:2], "--workload=Pose480", *CREATE[3:]], "--workload=Pose480"),
  ([*GKE[:2], "--workload=" + "a" * 41, *CREATE[3:]], "--workload=aaaa"),
  ([*CREATE, "--num-slices=0"], "--num-slices=0"),
  ([*CREATE, "--max-restarts=-1"], "--max-restarts=-1"),
  ([*CREATE, "--priority=urgent"], "--priority=urgent"),
  ([*CREATE, "--config=configs/nope.py"], "--config=configs/nope.py"),
  ([*CREATE, "--", "--num_processes=8"], "--num_processes"),
  ([*CREATE, "--env=1X=2"], "--env=1X=2"),
  ([*GKE, "--delete", "--workdir=gs://my-bucket/r"], "--delete takes no"),
  ([*GKE, "--zone=us-east5"], "--zone=us-east5"),
]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry", "real"])
@pytest.mark.parametrize(("args", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input(tools, args, message, dry_run):
  env, calls = tools
  r = sh(env, "xpk_train.sh", *(["--dry-run"] if dry_run else []), *args)
  assert r.returncode == 2, (r.stdout, r.stderr)
  assert message in r.stderr and "xpk_train.sh: error:" in r.stderr
  assert r.stdout == "" and calls() == [] and gcloud_calls(env) == []
