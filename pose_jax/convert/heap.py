"""The host heap of a streaming conversion: glibc keeps freed tensor-sized blocks unless told
otherwise (used by the convert CLI and the exporter; every call is a no-op off glibc)."""

from __future__ import annotations

import ctypes


def limit_heap_retention() -> None:
  """Makes glibc serve allocations >= 1 MiB by ``mmap`` and return them on free.

  By default glibc raises its mmap threshold up to 32 MiB after freeing large blocks, and then
  keeps freed tensor-sized blocks in per-thread arenas (tensorstore writes from several
  threads): after a few hundred tensors the process holds several tensors' worth of freed
  memory. Process-wide and permanent (it also disables glibc's adaptive threshold), so the CLI
  calls it, not the library functions; a no-op off glibc.
  """
  if _LIBC is not None:
    _LIBC.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def release_memory() -> None:
  """Returns freed heap memory to the OS (``malloc_trim``)."""
  if _LIBC is not None:
    _LIBC.malloc_trim(0)


_M_MMAP_THRESHOLD = -3
try:
  _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
  _LIBC = None
