"""Test set-up: 8 fake CPU devices (set before jax is imported anywhere), the session's shared
fixtures, and the launch/*.sh tests' ``env`` fixture (plugin ``tests.helpers.launch_env``).
Markers and warning filters live in ``pytest.ini``."""

import os

from tests.helpers import xla_flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
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


# The longest files, longest first. CI has 2 workers and `--dist loadfile`; with xdist's default
# reordering (files with the most tests first) these few-test, minutes-long files came last and
# the multi-process run ran alone at the end. `--no-loadscope-reorder` (pytest.ini) keeps this
# order: the first two go one to each worker (the second needs no reference run, so it does not
# wait while the first builds it), the rest fill in behind them.
LONGEST_FIRST = (
  "tests/training/test_multihost.py",
  "tests/aot/test_compile.py",
  "tests/training/test_workdir_faults.py",
  "tests/training/test_train.py",
)


def pytest_collection_modifyitems(session, config, items):
  rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
  key = lambda item: rank.get(item.nodeid.split("::")[0], len(rank))
  items.sort(key=key)  # stable: the rest keep their collection order
