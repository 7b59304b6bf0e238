"""Where a conversion writes: beside its destination, replacing only its own previous output.

``check`` refuses a destination that is a file or a folder the tool did not write (``is_ours``
decides: a model checkpoint, an export), before any work; ``temporary_sibling`` is where the new
output is written; ``install`` renames it into place and only then removes the old one.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from etils import epath


def _contents(path: epath.Path, most: int = 6) -> str:
  names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
  more = f", ... ({len(names) - most} more)" if len(names) > most else ""
  return ", ".join(names[:most]) + more


def check(dst, overwrite: bool, is_ours: Callable[[epath.Path], bool], what: str) -> None:
  """Raises :class:`FileExistsError` unless ``dst`` may be written: absent, an empty directory,
  or (with ``overwrite``) a previous output that ``is_ours`` recognises (``what``: its name).
  A file, or a directory holding anything else, is never replaced."""
  dst = epath.Path(dst)
  if not dst.exists():
    return
  refuse = "refusing to replace it — choose another --dst or remove it yourself"
  if not dst.is_dir():
    raise FileExistsError(f"{dst} is a file, not {what}; {refuse}")
  if not any(dst.iterdir()):
    return
  if not is_ours(dst):
    raise FileExistsError(f"{dst} is not {what} (holds {_contents(dst)}); {refuse}")
  if not overwrite:
    raise FileExistsError(f"{dst} exists (pass --overwrite to replace it)")


def temporary_sibling(dst, tag: str) -> epath.Path:
  """``DIR/.NAME.TAG-PID`` beside ``dst = DIR/NAME``: where an output is written before
  :func:`install` moves it to ``dst``."""
  dst = epath.Path(dst)
  return dst.parent / f".{dst.name}.{tag}-{os.getpid()}"


def install(tmp: epath.Path, dst, overwrite: bool, is_ours: Callable, what: str) -> None:
  """Renames the finished output ``tmp`` to ``dst``. ``dst`` is checked again (it may have changed
  while ``tmp`` was written, see :func:`check`); a previous one is renamed aside and removed only
  once ``tmp`` has taken its place."""
  dst = epath.Path(dst)
  check(dst, overwrite, is_ours, what)
  if not dst.exists():
    tmp.rename(dst)
    return
  old = temporary_sibling(dst, "replaced")
  dst.rename(old)
  try:
    tmp.rename(dst)
  except BaseException:
    old.rename(dst)
    raise
  old.rmtree()
