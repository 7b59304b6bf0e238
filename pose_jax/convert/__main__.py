"""Checkpoint conversion CLI (runs on the host CPU; never touches an accelerator).

  python -m pose_jax.convert import --format=diffusers|wan --src=DIR --dst=PATH [--dtype=bf16|fp32]
  python -m pose_jax.convert export --src=WORKDIR_OR_CKPT [--step=N|latest] [--which=student|ema]
      --dst=DIR --format=diffusers|wan [--dtype=bf16|fp32] [--max_shard_size=5GB]
  python -m pose_jax.convert export --format=lora --src=WORKDIR_OR_CKPT --rank=64 [--base=TEACHER]
      --dst=DIR [--dtype=bf16|fp32]     (student - teacher as a Wan LoRA: convert/lora.py)
  python -m pose_jax.convert export --src=WORKDIR_OR_CKPT --pipeline=TEACHER_PIPELINE_DIR --dst=DIR
      (a whole one-step diffusers pipeline folder: convert/pipeline_export.py)

``--src`` of export: a model checkpoint written by import, a train workdir (``--step`` picks
the step, ``--which`` the student or EMA weights) or one step directory.
``PATH``/``--src`` may be local or ``gs://...``. ``--config`` (a preset name or a diffusers
``config.json``) overrides the architecture read from the source (needed for a Wan2.1 checkpoint
without ``config.json`` whose head size is not 128, or a workdir without a ``wan_config`` item).
A flag of the other command, a missing ``--src``/``--dst`` or a stray argument exits with status 2
naming it; conversion errors (corrupt or mismatched sources, existing destinations) exit with
status 1 and one message. The flags and the commands' code: :mod:`pose_jax.convert.cli`.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import sys
from collections.abc import Sequence

from absl import app, flags, logging

from pose_jax.convert import cli

cli.define_flags(flags.FLAGS)
flags.adopt_module_key_flags(cli)  # --help lists them


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing; an unknown flag or a bad value exits with status 2, as usage errors do."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}\nPass --help to see the flags.", file=sys.stderr)
    sys.exit(2)


def main(argv: Sequence[str]) -> int:
  if not flags.FLAGS["verbosity"].present:  # app.run raised it to INFO: orbax logs every save
    logging.set_verbosity(logging.WARNING)
  return cli.execute(cli.command(argv))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
