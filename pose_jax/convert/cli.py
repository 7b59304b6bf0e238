"""The flags of ``python -m pose_jax.convert import|export``, defined once, and running a command.

The command is the first positional argument. Every flag says in its help which commands use it
(:data:`COMMAND_FLAGS`); :func:`command` rejects a flag given to the other command, a missing
``--src``/``--dst``, stray arguments and unknown commands with :class:`absl.app.UsageError`
(exit status 2), naming the flag. Conversion errors print ``error: ...`` and exit with 1.

:func:`define_flags` puts the flags on absl's global ``FLAGS`` (the CLI, ``__main__.py``) or on a
fresh ``FlagValues``: :func:`main` parses an argument list that way, so tests and benchmarks run
the CLI in process without touching process-wide flags (``--config``, ``--which``, ``--step`` and
``--dtype`` are also flags of ``pose_jax.sampling``; absl refuses a name defined twice).
"""

from __future__ import annotations

import pathlib
import re
import sys
import time
from collections.abc import Sequence

from absl import app, flags
from etils import epath

from pose_jax.convert.configs import load_config
from pose_jax.convert.errors import CheckpointError

PROG = "python -m pose_jax.convert"
_BOTH = ("import", "export")
_USED_BY = {  # flag -> the commands that read it
  "format": _BOTH,
  "src": _BOTH,
  "dst": _BOTH,
  "dtype": _BOTH,
  "config": _BOTH,
  "overwrite": _BOTH,
  "progress": _BOTH,
  "step": ("export",),
  "which": ("export",),
  "max_shard_size": ("export",),
  "rank": ("export",),
  "base": ("export",),
  "pipeline": ("export",),
}
COMMAND_FLAGS: dict[str, frozenset[str]] = {
  cmd: frozenset(name for name, used in _USED_BY.items() if cmd in used) for cmd in _BOTH
}
REQUIRED = ("src", "dst")

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20}
_UNITS.update({"GIB": 2**30, "TB": 10**12})


def parse_size(text: str) -> int:
  """``5GB`` / ``500MiB`` / ``1234`` -> bytes."""
  m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
  if not m or m.group(2).upper() not in _UNITS:
    raise ValueError(f"not a size: {text!r} (e.g. 5GB, 500MiB, 1234)")
  return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


class _SizeParser(flags.ArgumentParser):
  def parse(self, argument) -> int:
    return argument if isinstance(argument, int) else parse_size(argument)

  def flag_type(self) -> str:
    return "size"


class _SizeSerializer(flags.ArgumentSerializer):
  def serialize(self, value: int) -> str:
    unit = next((u for u in ("TB", "GB", "MB", "KB") if value and value % _UNITS[u] == 0), "")
    return f"{value // _UNITS[unit]}{unit}"


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines every flag of both commands on ``flag_values``."""

  def helps(name: str, text: str) -> dict:
    return dict(help=f"({', '.join(_USED_BY[name])}) {text}", flag_values=flag_values)

  flags.DEFINE_enum(
    "format",
    "diffusers",
    ["diffusers", "wan", "lora"],
    **helps(
      "format",
      "Checkpoint layout: diffusers, or wan (the original Wan2.1 release); export also lora "
      "(the student minus --base as a Wan LoRA, rank --rank: pose_jax/convert/lora.py).",
    ),
  )
  flags.DEFINE_string(
    "src",
    None,
    **helps(
      "src",
      "Required. import: checkpoint directory or .safetensors file; export: a model "
      "checkpoint, train workdir or step directory (local or gs://).",
    ),
  )
  flags.DEFINE_string(
    "dst",
    None,
    **helps(
      "dst", "Required. import: orbax checkpoint path (local or gs://); export: output directory."
    ),
  )
  flags.DEFINE_enum(
    "dtype", None, ["bf16", "fp32"], **helps("dtype", "Parameter dtype (default: the source's).")
  )
  flags.DEFINE_string(
    "config",
    None,
    **helps(
      "config",
      "Preset name or diffusers config.json: the architecture (default: read from the source).",
    ),
  )
  flags.DEFINE_bool("overwrite", False, **helps("overwrite", "Replace an existing --dst."))
  flags.DEFINE_bool("progress", True, **helps("progress", "Progress bar (--noprogress: none)."))
  flags.DEFINE_string("step", "latest", **helps("step", "Train workdir step: N or latest."))
  flags.DEFINE_enum(
    "which",
    None,
    ["student", "ema"],
    **helps("which", "Train workdir weights: student (default) or ema."),
  )
  flags.DEFINE(
    _SizeParser(),
    "max_shard_size",
    "5GB",
    serializer=_SizeSerializer(),
    **helps("max_shard_size", "Largest safetensors file: 5GB, 500MiB, 1234 (bytes), ..."),
  )
  flags.DEFINE_alias("max-shard-size", "max_shard_size", flag_values=flag_values)
  flags.DEFINE_string(
    "pipeline",
    None,
    **helps(
      "pipeline",
      "--format=diffusers: the teacher's diffusers pipeline folder; --dst becomes a whole "
      "one-step pipeline folder with the student as its transformer.",
    ),
  )
  flags.DEFINE_integer("rank", 64, **helps("rank", "--format=lora: the LoRA rank (>= 1)."))
  flags.DEFINE_string(
    "base",
    None,
    **helps("base", "--format=lora: the teacher model checkpoint (default: the run's init_from)."),
  )


def _usage(message: str) -> app.UsageError:
  return app.UsageError(message, exitcode=2)


def command(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """The command of ``argv`` (what absl leaves after parsing: program name, command), checked
  against the flags given. Raises :class:`app.UsageError` (exit status 2) naming the problem."""
  args = list(argv[1:])
  if not args or args[0] not in COMMAND_FLAGS:
    raise _usage(f"expected a command, import or export, first; got {args[:1] or 'none'}")
  cmd, stray = args[0], args[1:]
  if stray:
    raise _usage(f"unexpected arguments: {stray}")
  other = next(c for c in COMMAND_FLAGS if c != cmd)
  wrong = [f"--{n}" for n in _USED_BY if flag_values[n].present and n not in COMMAND_FLAGS[cmd]]
  if wrong:
    raise _usage(f"{', '.join(wrong)}: only for {other}, not for {cmd}")
  missing = [f"--{n}" for n in REQUIRED if flag_values[n].value is None]
  if missing:
    raise _usage(f"{cmd} needs {' and '.join(missing)}")
  if cmd == "import" and flag_values["format"].value == "lora":
    raise _usage("--format=lora: only for export (a LoRA is imported by the serving side)")
  lora_only = [f"--{n}" for n in ("rank", "base") if flag_values[n].present]
  if cmd == "export" and lora_only and flag_values["format"].value != "lora":
    raise _usage(f"{', '.join(lora_only)}: only with --format=lora")
  if flag_values["pipeline"].present and flag_values["format"].value != "diffusers":
    raise _usage("--pipeline: only with --format=diffusers (a diffusers pipeline folder)")
  if cmd == "export" and not re.fullmatch(r"latest|\d+", flag_values["step"].value):
    raise _usage(f"--step={flag_values['step'].value}: expected N or latest")
  return cmd


def parse(args: Sequence[str]) -> tuple[str, flags.FlagValues]:
  """``[command, --flag=value, ...]`` parsed by absl on fresh ``FlagValues``: (command, values).

  Raises ``flags.Error`` for an unknown flag or a bad value, :class:`app.UsageError` as
  :func:`command` does."""
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  rest = flag_values([PROG, *args])
  return command(rest, flag_values), flag_values


def run(cmd: str, flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """Runs one checked command; returns the summary line it prints."""
  f = {name: flag_values[name].value for name in _USED_BY}
  config = load_config(f["config"])
  start = time.time()
  step = None if f["step"] == "latest" else int(f["step"])  # export's: which weights, written how
  picked = dict(step=step, which=f["which"], dtype=f["dtype"], progress=f["progress"])
  if cmd == "import":
    from pose_jax.convert.importer import import_checkpoint

    plan = import_checkpoint(
      f["src"], f["dst"], f["format"], f["dtype"], config, f["overwrite"], f["progress"]
    )
    nbytes, what = plan.total_bytes, f"{plan.cfg.num_layers} layers, {plan.cfg.param_dtype}"
  elif f["format"] == "lora":
    from pose_jax.convert.lora import REPORT, WEIGHTS, export_lora

    report = export_lora(
      f["src"], f["dst"], f["rank"], base=f["base"], overwrite=f["overwrite"], **picked
    )
    files = [WEIGHTS, REPORT]
    nbytes = sum(epath.Path(f["dst"], name).stat().length for name in files)
    err = report["relative_error_by_rank"][str(f["rank"])]
    what = f"{report['matrices']} matrices, rank {f['rank']}, relative error {err:.3g}"
  elif f["pipeline"]:
    from pose_jax.convert.pipeline_export import export_pipeline

    files = export_pipeline(
      f["src"],
      f["dst"],
      f["pipeline"],
      overwrite=f["overwrite"],
      config=config,
      max_shard_bytes=f["max_shard_size"],
      **picked,
    )
    nbytes = sum(p.stat().st_size for p in pathlib.Path(f["dst"]).rglob("*") if p.is_file())
    what = f"a one-step pipeline: {', '.join(files)}"
  else:
    from pose_jax.convert.export import export_checkpoint

    files = export_checkpoint(
      f["src"],
      f["dst"],
      f["format"],
      config=config,
      max_shard_bytes=f["max_shard_size"],
      overwrite=f["overwrite"],
      **picked,
    )
    nbytes = sum(epath.Path(f["dst"], name).stat().length for name in files)
    what = f"{len(files)} files"
  secs = time.time() - start
  return (
    f"{cmd} {f['format']}: {f['src']} -> {f['dst']} ({what}); "
    f"{nbytes / 1e6:.1f} MB in {secs:.1f} s ({nbytes / 1e6 / max(secs, 1e-9):.1f} MB/s)"
  )


def execute(cmd: str, flag_values: flags.FlagValues = flags.FLAGS) -> int:
  """:func:`run` as the CLI does it: prints the summary and gives 0, or ``error: ...`` and 1."""
  from pose_jax.convert.heap import limit_heap_retention

  limit_heap_retention()  # peak memory ~ a few tensors, not a few hundred freed ones
  try:
    print(run(cmd, flag_values))
  except (CheckpointError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def main(args: Sequence[str]) -> int:
  """The CLI in this process: ``main(["import", "--src=DIR", "--dst=PATH"])`` -> exit status
  (2: a usage error or a bad flag, printed as ``error: ...``)."""
  try:
    cmd, flag_values = parse(args)
  except (app.UsageError, flags.Error) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return execute(cmd, flag_values)
