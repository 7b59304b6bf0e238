"""Test set-up: 8 fake CPU devices (set before jax is imported anywhere), the session's shared
fixtures, and the launch/*.sh tests' ``env`` fixture (plugin ``tests.helpers.launch_env``).
Markers and warning filters live in ``pytest.ini``."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

pytest_plugins = ["tests.helpers.launch_env"]


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope="session")
def toy_reference_run(tmp_path_factory, worker_id):
  """The uninterrupted toy run the end-to-end tests compare with, made once per session."""
  from tests.helpers import toy_runs

  base = tmp_path_factory.getbasetemp()
  return toy_runs.reference_run(base if worker_id == "master" else base.parent)
