"""Model configs named on command lines: a preset name or a diffusers ``config.json`` path."""

from __future__ import annotations

import json

from etils import epath

from pose_jax.convert.errors import CheckpointError
from pose_jax.models.wan import PRESETS, WanConfig


def load_config(spec: str | None) -> WanConfig | None:
  """A preset name or the path of a diffusers ``config.json`` (local or ``gs://``)."""
  if spec is None:
    return None
  if spec in PRESETS:
    return PRESETS[spec]
  try:
    return WanConfig.from_diffusers(json.loads(epath.Path(spec).read_text()))
  except (OSError, json.JSONDecodeError, KeyError) as e:
    raise CheckpointError(
      f"--config={spec}: not a preset {sorted(PRESETS)} nor a config ({e})"
    ) from e
