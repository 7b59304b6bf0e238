"""Training checkpoints with orbax: train state + teacher (when trained here) + data iterator +
run metadata, one ``CheckpointManager`` under ``<workdir>/checkpoints`` (local or ``gs://``).

Orbax writes each local step to a temporary directory and renames it when complete; on ``gs://``
(no atomic rename) it writes the step in place and adds ``commit_success.txt`` last. Either way
a step that was interrupted is never listed by ``all_steps()`` / ``latest_step()``
(``tests/cloud/test_gcs.py`` checks the bucket case).
"""

from __future__ import annotations

import grain
import orbax.checkpoint as ocp
from etils import epath


def manager(workdir: str, every: int, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  path = epath.Path(workdir) / "checkpoints"
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    save_interval_steps=every,
    create=True,
    enable_async_checkpointing=async_save,
  )
  return ocp.CheckpointManager(path, options=options)


def save(mngr, step: int, state, meta: dict, iterator=None, teacher=None, force=False) -> bool:
  items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
  if teacher is not None:
    items["teacher"] = ocp.args.StandardSave(teacher)
  if iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(iterator)
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore_meta(mngr, step: int) -> dict:
  """The run metadata saved at ``step`` alone (``phase_index``, ``has_teacher``): what picks the
  restore targets."""
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def restore(mngr, step: int, abstract_state, iterator=None, abstract_teacher=None):
  """``(state, meta, teacher | None)`` restored into the abstract targets' shardings
  (``ShapeDtypeStruct``s with shardings); ``iterator`` is restored in place."""
  items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
  if abstract_teacher is not None:
    items["teacher"] = ocp.args.StandardRestore(abstract_teacher)
  if iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(iterator)
  out = mngr.restore(step, args=ocp.args.Composite(**items))
  return out["state"], out["meta"], out.get("teacher") if abstract_teacher is not None else None
