"""Ahead-of-time compile of every POSE step for a TPU slice, from a CPU host (no TPU needed).

  python -m pose_jax.aot --config=configs/wan_i2v.py:480p --topology=v5p-64 \
    [--phase=all|pretrain|priming|equilibrium|sample] [--out=FILE.json] [--config.x=...]

Needs ``jax[tpu]`` (libtpu): ``python3 -m venv .venv-tpu && .venv-tpu/bin/pip install -r
requirements-tpu.txt -e .``. For each phase of ``config.pose.phases`` the fused training step is
built exactly as the trainer builds it (the config's mesh, remat policy, attention
kernel, global batch and micro-batches; abstract state and batch, nothing allocated), lowered
and compiled by XLA for the topology; ``sample`` is the student's one-step forward. Per phase it
prints and writes: per-device bytes (arguments, outputs, temporaries, peak) against the device's
HBM, model FLOPs per step counted analytically (:func:`phase_flops`), XLA's cost-analysis FLOPs
(undercounted: a scanned loop body is counted once), lower/compile seconds and the step time
implied at 40% MFU. Exits 1 naming the phase and its largest buffers when one does not fit.

Topologies are the user-facing Cloud TPU names: ``v4-N`` and ``v5p-N`` (N TensorCores, 2 per
chip, one megacore device per chip), ``v5e-N`` and ``v6e-N`` (N chips), ``tpu7x-N`` (N
TensorCores, 2 per chip, each its own device). Figures are per JAX device.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from pose_jax.aot.flops import phase_flops
from pose_jax.aot.report import (
  DoesNotFit,
  compiled_stats,
  largest_inputs,
  resharded_state_leaves,
  summarize_oom,
)
from pose_jax.aot.topology import make_mesh, parse_topology, topology_devices

GIB = 1024**3
MFU = 0.4

# --- the abstract batch -----------------------------------------------------------------------


def batch_shapes(config, cfg, batch_size: int) -> dict[str, tuple[int, ...]]:
  """Global shapes of one training batch (``pose_jax.data.example``'s schema plus ``neg_text``).

  Wan VAE latents: 8x spatial, 4x temporal, Z = ``out_channels``; text 512 UMT5 tokens, 257
  CLIP tokens. The toy data: the toy codec (2x spatial) and the toy encoders' token counts.
  """
  d = config.data
  frames = 1 + (d.frames - 1) // 4
  if d.kind == "toy":
    from pose_jax.data import toy
    from pose_jax.models.encoders import clip_vision

    h = w = d.size // 2
    text_len, image_len = toy.TEXT_LENGTH, clip_vision.preset("tiny").num_positions
  else:
    h, w = d.height // 8, d.width // 8
    text_len, image_len = 512, 257
  z = cfg.out_channels
  shapes = dict(
    latents=(batch_size, frames, h, w, z),
    cond=(batch_size, frames, h, w, cfg.in_channels - z),
    text=(batch_size, text_len, cfg.text_dim),
    neg_text=(batch_size, text_len, cfg.text_dim),
  )
  if cfg.is_i2v:
    shapes["image"] = (batch_size, image_len, cfg.image_dim)
  return shapes


def abstract_batch(shapes, mesh):
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding

  from pose_jax import sharding as shd

  sharding = NamedSharding(mesh, shd.logical_to_spec((shd.ACT_BATCH,)))
  return {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding) for k, s in shapes.items()}


# --- compile and report -----------------------------------------------------------------------


def _compile(fn, args, mesh, donate=(), names=()):
  import jax

  from pose_jax import sharding as shd

  jitted = fn if hasattr(fn, "lower") else jax.jit(fn, donate_argnums=donate)
  with shd.use_mesh(mesh):
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    try:
      compiled = lowered.compile()
    except Exception as e:  # XlaRuntimeError / JaxRuntimeError
      if "RESOURCE_EXHAUSTED" in str(e) or "exceeds" in str(e).lower():
        err = DoesNotFit("\n".join([summarize_oom(str(e)), *largest_inputs(args, names)]))
        err.raw = str(e)
        raise err from None
      raise
  return compiled, t1 - t0, time.perf_counter() - t1


def run(config, topology: str, phases=("all",), sample_batch: int | None = None) -> dict:
  """Compiles the requested phases; returns the report dict (``fits`` per phase)."""
  import jax

  from pose_jax import config as config_lib
  from pose_jax.pose import models as pose_models
  from pose_jax.pose.config import PoseConfig
  from pose_jax.sampling import samplers
  from pose_jax.training import optim, steps
  from pose_jax.training import state as state_lib
  from pose_jax.training.train import phase_plan

  topo = parse_topology(topology)
  devices = topology_devices(topo)
  if len(devices) != topo.devices:
    raise RuntimeError(f"{topology}: expected {topo.devices} devices, libtpu gave {len(devices)}")
  # Validate as a real run would, with placeholders for paths a compile never reads.
  checked = config.copy_and_resolve_references()
  with checked.unlocked():
    checked.ckpt.init_from = checked.ckpt.init_from or "<aot-compile>"
    checked.data.path = checked.data.path or "<aot-compile>"
  config_lib.validate(checked, len(devices), topo.hosts)

  knobs = PoseConfig.from_config(config.pose)
  cfg = config_lib.wan_config(config.model)
  mesh = make_mesh(config.mesh.shape, devices)
  sizes = dict(mesh.shape)
  models, teacher, lora, head = pose_models.build(cfg, knobs, config.seed, mesh, abstract=True)
  plan = phase_plan(knobs)
  total = plan[-1][2]
  wanted = set(phases)
  todo = [p for p in plan if "all" in wanted or p[0] in wanted]
  do_sample = "all" in wanted or "sample" in wanted
  unknown = wanted - {"all", "sample", *knobs.phases}
  if unknown:
    raise ValueError(f"--phase {sorted(unknown)} not in this config's {knobs.phases} or 'sample'")

  batch = config.train.batch_size
  shapes = batch_shapes(config, cfg, batch)
  grid = shapes["latents"][1:4]
  text_len = shapes["text"][1]
  image_len = shapes["image"][1] if "image" in shapes else 0
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(teacher))
  report = dict(
    config=dict(
      preset=config.model.preset,
      frames=config.data.frames,
      height=config.data.get("height", config.data.get("size")),
      width=config.data.get("width", config.data.get("size")),
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      remat=cfg.remat,
      attention=cfg.attention,
      scan_layers=cfg.scan_layers,
      mesh=sizes,
      batch_size=batch,
      micro_batches=config.train.micro_batches,
      phases=list(knobs.phases),
      knobs=dict(
        cfg_real=knobs.cfg_real,
        lam_cons=knobs.lam_cons,
        cons_cfg=knobs.cons_cfg,
        d_backbone=knobs.d_backbone,
        joint=knobs.joint,
        fake_updates_per_step=knobs.fake_updates_per_step,
        lora_rank=knobs.lora_rank,
        taps=list(models.taps),
      ),
    ),
    topology=dict(
      name=topology,
      topology_name=topo.topology_name,
      devices=len(devices),
      chips=topo.chips,
      hosts=topo.hosts,
      device_kind=devices[0].device_kind,
      hbm_gib_per_device=topo.chip.hbm_gib,
      peak_bf16_tflops_per_device=topo.chip.peak_tflops,
    ),
    dit_params=n_params,
    batch_shapes={k: list(v) for k, v in shapes.items()},
    flops_counting=(
      "model_flops: analytic matmul FLOPs (2mnk) of the DiT passes one step makes on the global "
      "batch (see 'passes': read off pose_jax.pose.phases), forward 1x; backward 2x for "
      "weight+input gradients, 1x weight matmuls + 2x attention for input-only gradients "
      "(frozen weights), "
      "plus the LoRA weight gradients for F; self/cross attention QK^T and PV included; "
      "elementwise, norms, RoPE and the optimizer not counted; remat recompute reported "
      "separately (remat_recompute_flops), not in model_flops (MFU convention). "
      "xla_flops_undercounted: XLA cost_analysis, which counts a scanned layer body once."
    ),
    jax_version=jax.__version__,
    phases={},
  )
  peak_flops = topo.chip.peak_tflops * 1e12 * len(devices)

  def finish(name, entry, compiled, lower_s, compile_s, flops):
    mem = compiled_stats(compiled)
    hbm = topo.chip.hbm_gib * GIB
    entry.update(
      fits=mem["peak_bytes"] <= hbm,
      lower_s=round(lower_s, 2),
      compile_s=round(compile_s, 2),
      **mem,
      peak_gib=round(mem["peak_bytes"] / GIB, 3),
      hbm_gib=topo.chip.hbm_gib,
      **flops,
      model_tflops_per_step=float(f"{flops['model_flops'] / 1e12:.5g}"),
      step_s_at_40pct_mfu=float(f"{flops['model_flops'] / (MFU * peak_flops):.4g}"),
    )
    report["phases"][name] = entry
    print(
      f"[{name}] {'fits' if entry['fits'] else 'DOES NOT FIT'}: peak {entry['peak_gib']:.2f} GiB "
      f"of {topo.chip.hbm_gib} GiB/device (args {mem['argument_bytes'] / GIB:.2f}, out "
      f"{mem['output_bytes'] / GIB:.2f}, temp {mem['temp_bytes'] / GIB:.2f}); model "
      f"{entry['model_flops'] / 1e12:.4g} TFLOP/step -> {entry['step_s_at_40pct_mfu']:.2f} s at "
      f"40% MFU; lower {lower_s:.1f}s compile {compile_s:.1f}s",
      flush=True,
    )

  for phase, start, stop in todo:
    if phase == "sample":
      continue
    tx = optim.make_optimizer(config.optim, phase, total, knobs)
    state = state_lib.abstract_state(tx, teacher, lora, head, knobs, config.seed, mesh)
    step = steps.make_step(
      phase, knobs, models, tx, start, stop - start, config.train.micro_batches
    )
    flops = phase_flops(phase, knobs, cfg, models.taps, batch, grid, text_len, image_len)
    entry = dict(batch=batch, micro_batches=config.train.micro_batches)
    print(f"[{phase}] lowering + compiling for {topology} mesh {sizes} ...", flush=True)
    try:
      compiled, lower_s, compile_s = _compile(
        steps.jit_step(step, state),  # as train.py jits it
        (state, teacher, abstract_batch(shapes, mesh)),
        mesh,
        names=("state", "teacher", "batch"),
      )
    except DoesNotFit as e:
      report["phases"][phase] = dict(
        entry, fits=False, error=str(e), error_raw=e.raw[:20000], **flops
      )
      print(f"[{phase}] DOES NOT FIT (XLA RESOURCE_EXHAUSTED):\n{e}", flush=True)
      continue
    moved = resharded_state_leaves(compiled, state)
    entry.update(resharded_state_leaves=len(moved), resharded_state_examples=moved[:8])
    if moved:
      print(f"[{phase}] warning: {len(moved)} state leaves change sharding, e.g. {moved[:3]}")
    finish(phase, entry, compiled, lower_s, compile_s, flops)

  if do_sample:
    dp = sizes["data"] * sizes["fsdp"]
    sb = sample_batch or dp
    s_shapes = batch_shapes(config, cfg, sb)
    s_batch = abstract_batch(s_shapes, mesh)
    flops = phase_flops("sample", knobs, cfg, models.taps, sb, grid, text_len, image_len)
    noise = s_batch["latents"]

    def sample(params, noise, cond, text, image):
      return samplers.student(models.dit, params, noise, cond, text, image)

    entry = dict(
      batch=sb,
      batch_note=(
        f"global batch {sb} = one clip per data x fsdp shard ({dp})"
        if sample_batch is None
        else f"global batch {sb} (--sample_batch)"
      ),
    )
    print(f"[sample] lowering + compiling the one-step student, batch {sb} ...", flush=True)
    try:
      compiled, lower_s, compile_s = _compile(
        sample,
        (teacher, noise, s_batch["cond"], s_batch["text"], s_batch.get("image")),
        mesh,
        names=("student", "noise", "cond", "text", "image"),
      )
      finish("sample", entry, compiled, lower_s, compile_s, flops)
    except DoesNotFit as e:
      report["phases"]["sample"] = dict(
        entry, fits=False, error=str(e), error_raw=e.raw[:20000], **flops
      )
      print(f"[sample] DOES NOT FIT (XLA RESOURCE_EXHAUSTED):\n{e}", flush=True)
  return report


def compile_only_env() -> None:
  """Keeps JAX off any local accelerator (CPU default backend; libtpu only compiles), quiets
  libtpu's start-up probing and lets several compiles load libtpu at once (no lockfile)."""
  import jax

  for key, value in (
    ("JAX_PLATFORMS", "cpu"),
    ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
    ("TPU_WORKER_HOSTNAMES", "localhost"),
    ("TPU_ACCELERATOR_TYPE", "v5p-8"),
  ):
    os.environ.setdefault(key, value)
  jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])  # jax read it at import


def main(argv) -> None:
  from absl import app

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    parse_topology(_TOPOLOGY.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  phases = tuple(p.strip() for p in _PHASE.value.split(",") if p.strip())
  report = run(_CONFIG.value, _TOPOLOGY.value, phases, _SAMPLE_BATCH.value)
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
      json.dump(report, f, indent=1)
      f.write("\n")
    print(f"wrote {_OUT.value}")
  bad = {k: v for k, v in report["phases"].items() if not v["fits"]}
  if bad:
    hbm = report["topology"]["hbm_gib_per_device"]
    lines = []
    for name, v in bad.items():
      why = v.get("error") or f"peak {v['peak_gib']:.2f} GiB > {hbm} GiB"
      lines.append(
        f"phase {name!r} does not fit on {_TOPOLOGY.value} ({hbm} GiB HBM/device):\n{why}"
      )
    sys.exit("error: " + "\n".join(lines))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.")
  _TOPOLOGY = flags.DEFINE_string("topology", "v5p-64", "Cloud TPU name, e.g. v5p-64, v6e-256.")
  _PHASE = flags.DEFINE_string(
    "phase", "all", "all, or comma-separated phases of config.pose.phases and/or 'sample'."
  )
  _OUT = flags.DEFINE_string("out", "", "Write the report as JSON here.")
  _SAMPLE_BATCH = flags.DEFINE_integer(
    "sample_batch", None, "Global batch of the sampler compile (default: data x fsdp)."
  )
  flags.mark_flag_as_required("config")
  compile_only_env()
  app.run(main)
