"""Shard datasets in a bucket (``config.data.path=gs://b/shards``, ``prepare --out=gs://...``).

array_record reads and writes local files only, so a ``gs://`` dataset is read through a local
cache: :func:`fetch` copies ``meta.json``, ``neg_text.npy`` and the shards into
``<cache>/<bucket>/<path>`` (``config.data.cache_dir``; default ``$TMPDIR/pose_jax_data``) and
returns that directory. A cached file is used again only if it is intact: its size equals the
object's and, for shards whose ``meta.json`` records a SHA-256 (``ShardWriter`` writes them), its
hash matches; anything else is fetched again. Each file is downloaded to a temporary name and
renamed into place once its checks pass, so a download cut short is never mistaken for a shard,
and several processes of one host may fetch the same dataset at once (each rename puts the same
bytes in place). Every host holds the whole dataset: the pipeline shuffles all records globally
and each process reads every n-th batch of that order (``records.make_dataset``), which touches
every shard. For a dataset larger than a host's disk, mount the bucket with gcsfuse and pass
the mount point as ``config.data.path`` instead (reads then stream through the mount).

:func:`upload` is the other way: a local dataset directory to ``gs://``, shards first and
``meta.json`` last, so a dataset with a ``meta.json`` in the bucket is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

from etils import epath

from pose_jax import paths

META = "meta.json"
NEG_TEXT = "neg_text.npy"
_CHUNK = 8 << 20


class CorruptShard(ValueError):
  """A file fetched from the bucket does not match its size or recorded SHA-256."""


def sha256(path) -> str:
  h = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    while block := f.read(_CHUNK):
      h.update(block)
  return h.hexdigest()


def default_cache() -> str:
  return os.path.join(tempfile.gettempdir(), "pose_jax_data")


def cache_dir_for(remote: str, cache: str = "") -> str:
  """The local directory that mirrors ``remote`` (``gs://b/x`` -> ``<cache>/gs/b/x``)."""
  scheme, rest = os.fspath(remote).split("://", 1)
  return os.path.join(cache or default_cache(), scheme, rest.strip("/"))


def _intact(local: str, size: int, digest: str | None) -> bool:
  return (
    os.path.isfile(local)
    and os.path.getsize(local) == size
    and (digest is None or sha256(local) == digest)
  )


def _download(remote: epath.Path, local: str, size: int, digest: str | None) -> None:
  tmp = f"{local}.part-{os.getpid()}"
  with remote.open("rb") as src, open(tmp, "wb") as dst:
    while block := src.read(_CHUNK):
      dst.write(block)
  if not _intact(tmp, size, digest):
    got = os.path.getsize(tmp)
    os.remove(tmp)
    raise CorruptShard(
      f"{remote}: fetched {got} bytes, expected {size}"
      + (f" with SHA-256 {digest} (meta.json)" if digest else "")
      + "; the bucket's copy is damaged or was rewritten mid-read"
    )
  os.replace(tmp, local)


def fetch(remote: str, cache: str = "", log=print) -> str:
  """The local directory holding an intact copy of the dataset at ``remote`` (module doc).

  ``remote`` must hold ``meta.json`` (a dataset directory ``prepare`` wrote); raises
  FileNotFoundError naming it otherwise, :class:`CorruptShard` for a file that arrives damaged."""
  root = epath.Path(remote)
  meta_path = root / META
  if not meta_path.exists():
    raise FileNotFoundError(
      f"{remote}: no {META} (a dataset directory written by pose_jax.data.prepare; an upload "
      "still in progress has none yet)"
    )
  local_root = cache_dir_for(remote, cache)
  os.makedirs(local_root, exist_ok=True)
  meta_bytes = meta_path.read_bytes()
  meta = json.loads(meta_bytes)
  digests = meta.get("sha256") or {}
  names = list(meta["shards"]) + ([meta["neg_text"]] if meta.get("neg_text") else [])
  fetched = 0
  for name in names:
    obj = root / name
    size, local = obj.stat().length, os.path.join(local_root, name)
    if not _intact(local, size, digests.get(name)):
      _download(obj, local, size, digests.get(name))
      fetched += 1
  with open(os.path.join(local_root, META), "wb") as f:  # last: the copy is whole
    f.write(meta_bytes)
  if log:
    log(f"data: {remote} -> {local_root} ({fetched} of {len(names)} files fetched, rest cached)")
  return local_root


def local_or_fetched(path: str, cache: str = "", log=print) -> str:
  """``path`` if local, else :func:`fetch` of it."""
  return fetch(path, cache, log) if paths.is_remote(path) else path


def upload(local_dir: str, remote: str) -> list[str]:
  """Copies a local dataset directory to ``remote``: every file but ``meta.json``, then
  ``meta.json`` (so its presence means complete); returns the names copied."""
  root = epath.Path(remote)
  root.mkdir(parents=True, exist_ok=True)
  names = sorted(n for n in os.listdir(local_dir) if os.path.isfile(os.path.join(local_dir, n)))
  if META not in names:
    raise FileNotFoundError(f"{local_dir}: no {META}; not a finished dataset directory")
  order = [n for n in names if n != META] + [META]
  for name in order:
    with open(os.path.join(local_dir, name), "rb") as src, (root / name).open("wb") as dst:
      while block := src.read(_CHUNK):
        dst.write(block)
  return order


def staging_dir(out: str) -> str:
  """Where a writer puts a dataset bound for ``out``: ``out`` itself if local, else its local
  cache directory (:func:`cache_dir_for`; a run on this host then fetches nothing)."""
  return cache_dir_for(out) if paths.is_remote(out) else out


def publish(staged: str, out: str, log=print) -> None:
  """Uploads ``staged`` to ``out`` when they differ (a ``gs://`` ``out``; ``meta.json`` last)."""
  if staged != out:
    names = upload(staged, out)
    log(f"uploaded {len(names)} files to {out} (staged in {staged}, the cache a run reads)")
