"""What a compiled executable costs, read off XLA: per-device memory, XLA's FLOPs, the shapes
each device's splash kernels run on, the useful lines of an out-of-memory error, the largest
inputs, and state leaves that would reshard.
Shared by the ahead-of-time compiler and the trainer's compile log.
"""

from __future__ import annotations

import math
import re

import jax

from pose_jax.sharding import path_str

GIB = 1024**3


class DoesNotFit(RuntimeError):
  pass


def summarize_oom(message: str, limit: int = 8) -> str:
  """The useful lines of XLA's RESOURCE_EXHAUSTED message: the totals and the largest buffers."""
  lines = [s.strip() for s in message.splitlines() if s.strip()]
  keep = [s for s in lines if re.search(r"RESOURCE_EXHAUSTED|exceed|Used .* of|Total", s)][:3]
  buffers = [s for s in lines if re.search(r"(Size|size): [\d.]+[KMG]?i?B?", s)]
  buffers += [s for s in lines if re.search(r"Shape: |Operator: |XLA label: |Allocation type", s)]
  out = keep + buffers[: 4 * limit]
  return "\n".join(out) if out else "\n".join(lines[:20])


def largest_inputs(args, names=(), limit: int = 5) -> list[str]:
  """The largest per-device input buffers (``path global -> per-device shape, GiB``): what the
  report names when XLA's message lists no buffers (its temporaries pre-check)."""
  rows = []
  for path, a in jax.tree_util.tree_leaves_with_path(args):
    sharding = getattr(a, "sharding", None)
    if sharding is None or not hasattr(a, "shape"):
      continue
    local = sharding.shard_shape(a.shape)
    size = math.prod(local) * a.dtype.itemsize
    spec = getattr(sharding, "spec", "")
    where = path_str(path)
    head, _, rest = where.partition("/")
    if head.isdigit() and int(head) < len(names):
      where = "/".join(filter(None, (names[int(head)], rest)))
    rows.append((size, f"{where} {a.dtype}{list(a.shape)} {spec} -> {list(local)}"))
  rows.sort(key=lambda r: -r[0])
  total = sum(r[0] for r in rows)
  out = [f"inputs per device: {total / GIB:.2f} GiB; largest:"]
  return out + [f"  {size / GIB:.2f} GiB  {what}" for size, what in rows[:limit]]


def memory(compiled) -> dict:
  mem = compiled.memory_analysis()
  get = lambda k: int(getattr(mem, k, 0) or 0)
  out = {
    "argument_bytes": get("argument_size_in_bytes"),
    "output_bytes": get("output_size_in_bytes"),
    "alias_bytes": get("alias_size_in_bytes"),
    "temp_bytes": get("temp_size_in_bytes"),
    "generated_code_bytes": get("generated_code_size_in_bytes"),
    "host_temp_bytes": get("host_temp_size_in_bytes"),
  }
  peak = get("peak_memory_in_bytes")
  if not peak:  # older runtimes: arguments + outputs - aliased + temporaries (an upper bound)
    peak = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
  out["peak_bytes"] = peak
  return out


def xla_flops(compiled) -> float:
  """XLA's cost-analysis FLOPs (undercounted: a scanned loop body is counted once)."""
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", -1.0))


def compiled_stats(compiled) -> dict:
  """Per-device bytes (``memory``) and XLA's FLOPs of a compiled executable: what the AOT
  report and the trainer's compile log both print."""
  return {**memory(compiled), "xla_flops_undercounted": xla_flops(compiled)}


# A splash forward kernel in optimized TPU HLO: its result tuple ends with the attention output,
# [..., heads, queries, head_dim] per device (custom-call name splash_mha_fwd...).
_SPLASH_FWD = re.compile(r"%splash_mha_fwd\S* = \((.*?)\) custom-call\(")
_SHAPE = re.compile(r"\w+\[([\d,]*)\]")


def splash_shapes(hlo_text: str) -> list[dict]:
  """The distinct per-device ``{"heads", "queries", "head_dim"}`` of the splash forward kernels
  in a compiled program's HLO (``compiled.as_text()``): what each device's attention really
  computes, e.g. L/context queries under context parallelism."""
  found = set()
  for m in _SPLASH_FWD.finditer(hlo_text):
    dims = [int(d) for d in _SHAPE.findall(m.group(1))[-1].split(",")]
    found.add(tuple(dims[-3:]))
  return [dict(heads=n, queries=q, head_dim=k) for n, q, k in sorted(found)]


def resharded_state_leaves(compiled, state) -> list[str]:
  """State leaves whose output sharding differs from the input's: ``'path: in -> out'``. Those
  cannot alias their donated buffer, and the next call of the compiled step (``train.py`` feeds
  the returned state back in) would get arguments in shardings it was not compiled for."""
  outs = jax.tree.leaves(compiled.output_shardings[0])
  ins = jax.tree_util.tree_leaves_with_path(state)
  return [
    f"{path_str(path)}: {i.sharding.spec} -> {getattr(o, 'spec', o)}"
    for o, (path, i) in zip(outs, ins, strict=True)
    if not o.is_equivalent_to(i.sharding, len(i.shape))
  ]
