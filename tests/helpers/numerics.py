"""Error measures the parity tests and ``bench/parity_report.py`` bound.

Every parity bound in the tests is on :func:`rel_err`: the largest absolute error relative to the
largest magnitude of the reference, in float64 (so the measure adds no round-off of its own).
"""

from __future__ import annotations

import numpy as np


def rel_err(a, ref) -> float:
  """``max |a - ref| / max |ref|``, both taken to float64 first (numpy, jax or torch-on-CPU)."""
  a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(a - ref).max() / np.abs(ref).max())


def masked_rel_err(a, ref, valid) -> float:
  """:func:`rel_err` over the positions where ``valid`` is true (e.g. unpadded tokens)."""
  a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(a - ref)[valid].max() / np.abs(ref[valid]).max())
