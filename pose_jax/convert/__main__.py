"""Checkpoint conversion CLI (runs on the host CPU; never touches an accelerator).

  python -m pose_jax.convert import --format=diffusers|wan --src=DIR --dst=PATH [--dtype=bf16|fp32]
  python -m pose_jax.convert export --src=WORKDIR_OR_CKPT [--step=N|latest] [--which=student|ema]
      --dst=DIR --format=diffusers|wan [--dtype=bf16|fp32] [--max-shard-size=5GB]

``--src`` of export: a model checkpoint written by import, a train workdir (``--step`` picks
the step, ``--which`` the student or EMA weights) or one step directory.
``PATH``/``--src`` may be local or ``gs://...``. ``--config`` (a preset name or a diffusers
``config.json``) overrides the architecture read from the source (needed for a Wan2.1 checkpoint
without ``config.json`` whose head size is not 128, or a workdir without a ``wan_config`` item).
Errors (corrupt or mismatched sources, existing destinations) exit with status 1 and one message.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import re
import sys
import time

from etils import epath

from pose_jax.convert.configs import load_config
from pose_jax.convert.errors import CheckpointError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_UNITS.update({"GIB": 2**30, "TB": 10**12})


def parse_size(text: str) -> int:
  """``5GB`` / ``500MiB`` / ``1234`` -> bytes."""
  m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
  if not m or m.group(2).upper() not in _UNITS:
    raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MiB, 1234)")
  return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m pose_jax.convert",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", required=True)
  imp = sub.add_parser("import", help="PyTorch safetensors -> orbax model checkpoint")
  imp.add_argument("--format", choices=("diffusers", "wan"), default="diffusers")
  imp.add_argument("--src", required=True, help="checkpoint directory or .safetensors file")
  imp.add_argument("--dst", required=True, help="orbax checkpoint path (local or gs://)")
  imp.add_argument("--dtype", choices=("bf16", "fp32"), help="parameter dtype (default: source)")
  exp = sub.add_parser("export", help="model checkpoint or train workdir -> safetensors")
  exp.add_argument("--src", required=True, help="model checkpoint, train workdir or step dir")
  exp.add_argument("--dst", required=True, help="output directory")
  exp.add_argument("--format", choices=("diffusers", "wan"), default="diffusers")
  exp.add_argument("--step", default="latest", help="workdir step: N or latest")
  exp.add_argument("--which", choices=("student", "ema"), help="workdir item (default student)")
  exp.add_argument("--dtype", choices=("bf16", "fp32"), help="default: dtype of the source")
  exp.add_argument("--max-shard-size", type=parse_size, default="5GB")
  for p in (imp, exp):
    p.add_argument("--config", help="preset name or diffusers config.json (architecture)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --dst")
    p.add_argument("--no-progress", dest="progress", action="store_false")
  return parser


def run(argv: list[str] | None = None) -> str:
  """Runs one command; returns the summary line it prints."""
  args = build_parser().parse_args(argv)
  config = load_config(args.config)
  start = time.time()
  if args.command == "import":
    from pose_jax.convert.importer import import_checkpoint

    plan = import_checkpoint(
      args.src, args.dst, args.format, args.dtype, config, args.overwrite, args.progress
    )
    nbytes, what = plan.total_bytes, f"{plan.cfg.num_layers} layers, {plan.cfg.param_dtype}"
  else:
    from pose_jax.convert.export import export_checkpoint

    step = None if args.step == "latest" else int(args.step)
    files = export_checkpoint(
      args.src,
      args.dst,
      args.format,
      step=step,
      which=args.which,
      dtype=args.dtype,
      config=config,
      max_shard_bytes=args.max_shard_size,
      overwrite=args.overwrite,
      progress=args.progress,
    )
    nbytes = sum(epath.Path(args.dst, f).stat().length for f in files)
    what = f"{len(files)} files"
  secs = time.time() - start
  return (
    f"{args.command} {args.format}: {args.src} -> {args.dst} ({what}); "
    f"{nbytes / 1e6:.1f} MB in {secs:.1f} s ({nbytes / 1e6 / max(secs, 1e-9):.1f} MB/s)"
  )


def main(argv: list[str] | None = None) -> int:
  from pose_jax.convert.orbax_io import limit_heap_retention

  limit_heap_retention()  # peak memory ~ a few tensors, not a few hundred freed ones
  try:
    print(run(argv))
  except (CheckpointError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
