"""The GCS emulator the tests in this folder write to: one per xdist worker and session, its
variables set in ``os.environ`` (so subprocess runs inherit them) while it runs."""

import pytest

from tests.helpers import gcs


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
  """A running fake-gcs-server with bucket ``gcs.BUCKET``, the clients pointed at it."""
  server = gcs.Emulator(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log")
  old = gcs.set_env(server.env())
  yield server
  gcs.restore_env(old)
  server.stop()
