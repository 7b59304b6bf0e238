"""The paths a user gives the package (``--workdir``, ``config.data.path``, ``ckpt.init_from``,
``convert --src/--dst``, ``sampling --ckpt/--out``): local or ``gs://``.

Everything that reads or writes such a path goes through etils ``epath`` (gcsfs under
``gs://``), or, where the library underneath reads only local files (array_record, PyAV's
decoder, diffusers / transformers ``from_pretrained``, safetensors' memory map), refuses a
remote path with :class:`LocalOnly`: one message naming the path, why, and what to do. Without
that, array_record handed ``gs://...`` waits forever, and ``os.makedirs("gs://b/run")`` quietly
makes a local folder named ``gs:``.
"""

from __future__ import annotations

import os

GCSFUSE = "mount the bucket with gcsfuse and pass the mount point"
# array_record's own file layer takes a gs:// path and then waits forever (no error, no output)
ARRAY_RECORD = "array_record reads and writes shards on local disk only (given gs:// it hangs)"
ARRAY_RECORD_FIX = f"copy the shards to local disk (gcloud storage cp -r) or {GCSFUSE}"


class LocalOnly(ValueError):
  """A remote path (``gs://...``) where only a local one can be read or written."""


def is_remote(path) -> bool:
  """``True`` for a URL path (``gs://``, ``s3://``, ...), which ``os.path`` cannot handle."""
  return "://" in os.fspath(path) if path else False


def local_only(path, what: str, why: str, fix: str = GCSFUSE) -> str:
  """``path`` unchanged if local; else :class:`LocalOnly`
  ``"{what}={path}: {why}; {fix}"`` (e.g. ``what="config.data.path"``)."""
  if is_remote(path):
    raise LocalOnly(f"{what}={path}: {why}; {fix}")
  return os.fspath(path)
