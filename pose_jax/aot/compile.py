"""Ahead-of-time compile of every POSE step for a TPU slice, from a CPU host (no TPU needed).

The CLI is ``python -m pose_jax.aot`` (:mod:`pose_jax.aot.__main__`, which keeps JAX off any
local accelerator before this module is imported). For each phase of ``config.pose.phases``,
:func:`compile_phase` builds the fused training step exactly as the trainer builds it (the
config's mesh, remat policy, attention kernel, global batch and micro-batches; abstract state and
batch, nothing allocated), lowers it and has XLA compile it for the topology;
:func:`compile_sampler` does the same for the student's one-step forward (``sample``). Each
returns its report entry: per-device bytes (arguments, outputs, temporaries, peak) against the
device's HBM, model FLOPs per step counted analytically (:mod:`pose_jax.aot.flops`, convention
``FLOPS_CONVENTION``), XLA's cost-analysis FLOPs (undercounted: a scanned loop body is counted
once), lower/compile seconds and the step time implied at 40% MFU; or ``fits=False`` with XLA's
out-of-memory message cut to its useful lines plus the largest inputs. :func:`run` compiles
the requested programs and returns the whole report.

Topologies are the user-facing Cloud TPU names (:mod:`pose_jax.aot.topology`): ``v4-N`` and
``v5p-N`` (N TensorCores, 2 per chip, one megacore device per chip), ``v5e-N`` and ``v6e-N`` (N
chips), ``tpu7x-N`` (N TensorCores, 2 per chip, each its own device). Figures are per JAX device.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding

from pose_jax import config as config_lib
from pose_jax import sharding as shd
from pose_jax.aot.flops import SAMPLE, phase_flops
from pose_jax.aot.report import (
  DoesNotFit,
  compiled_stats,
  largest_inputs,
  resharded_state_leaves,
  splash_shapes,
  summarize_oom,
)
from pose_jax.aot.roofline import roofline
from pose_jax.aot.topology import Topology, make_mesh, parse_topology, topology_devices
from pose_jax.data import toy
from pose_jax.data.toy_codec import ToyCodec
from pose_jax.models.encoders import clip_vision
from pose_jax.models.wan import WanConfig
from pose_jax.pose import models as pose_models
from pose_jax.pose import phases as phase_records
from pose_jax.pose.config import PoseConfig
from pose_jax.sampling import samplers
from pose_jax.training import optim, steps
from pose_jax.training import state as state_lib
from pose_jax.training.train import phase_plan

GIB = 1024**3
MFU = 0.4
FLOPS_CONVENTION = "analytic-mfu (see pose_jax.aot.flops)"

# --- the abstract batch -----------------------------------------------------------------------


def batch_shapes(config, cfg: WanConfig, batch_size: int) -> dict[str, tuple[int, ...]]:
  """Global shapes of one training batch (``pose_jax.data.example``'s schema plus ``neg_text``).

  Wan VAE latents: 8x spatial, 4x temporal, Z = ``out_channels``; text 512 UMT5 tokens, 257
  CLIP tokens. The toy data: the toy codec (every frame, ``ToyCodec.spatial_factor`` x
  spatial) and the toy encoders' token counts.
  """
  d = config.data
  frames = 1 + (d.frames - 1) // 4
  if d.kind == "toy":
    frames, h = d.frames, d.size // ToyCodec.from_config(d).spatial_factor
    w = h
    text_len, image_len = toy.TEXT_LENGTH, clip_vision.preset("tiny").num_positions
  else:
    h, w = d.height // 8, d.width // 8
    text_len, image_len = 512, 257
  z = cfg.out_channels
  shapes = dict(
    latents=(batch_size, frames, h, w, z),
    cond=(batch_size, frames, h, w, cfg.in_channels - z),
    text=(batch_size, text_len, cfg.text_dim),
    text_mask=(batch_size, text_len),
    neg_text=(batch_size, text_len, cfg.text_dim),
  )
  if cfg.is_i2v:
    shapes["image"] = (batch_size, image_len, cfg.image_dim)
  return shapes


def abstract_batch(shapes, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  sharding = NamedSharding(mesh, shd.logical_to_spec((shd.ACT_BATCH,)))
  dtype = lambda k: jnp.int32 if k == "text_mask" else jnp.float32  # data.example's schema
  return {k: jax.ShapeDtypeStruct(s, dtype(k), sharding=sharding) for k, s in shapes.items()}


# --- what every compile of one config on one topology shares ----------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
  """A validated config on a topology: its mesh over the topology's devices and its abstract
  models (``ShapeDtypeStruct``s carrying their shardings)."""

  config: ml_collections.ConfigDict
  topology: str
  topo: Topology
  devices: list
  knobs: PoseConfig
  wan_config: WanConfig
  mesh: Mesh
  models: pose_models.Models
  teacher: Any
  lora: Any
  head: Any

  def shapes(self, batch: int) -> dict[str, tuple[int, ...]]:
    return batch_shapes(self.config, self.wan_config, batch)

  def flops(self, phase: str, batch: int) -> dict:
    shapes = self.shapes(batch)
    grid, text_len = shapes["latents"][1:4], shapes["text"][1]
    image_len = shapes["image"][1] if "image" in shapes else 0
    return phase_flops(
      phase, self.knobs, self.wan_config, self.models.taps, batch, grid, text_len, image_len
    )


def check_phases(phases, known) -> None:
  """ValueError naming ``--phase`` unless each of ``phases`` is ``all``, ``sample`` or known."""
  unknown = set(phases) - {"all", SAMPLE, *known}
  if unknown:
    raise ValueError(f"--phase {sorted(unknown)} not in this config's {known} or 'sample'")


def setup(config, topology: str) -> Setup:
  """Validates ``config`` for ``topology`` as a real run would (placeholders for the paths a
  compile never reads) and builds its abstract models on the topology's mesh."""
  topo = parse_topology(topology)
  slices = config.mesh.slices
  if not isinstance(slices, int) or slices < 1:
    raise config_lib.ConfigError(f"config.mesh.slices: {slices!r} is not a positive number")
  devices = topology_devices(topo, slices)
  if len(devices) != topo.devices * slices:
    raise RuntimeError(
      f"{topology} x {slices}: expected {topo.devices * slices} devices, libtpu gave {len(devices)}"
    )
  checked = config.copy_and_resolve_references()
  with checked.unlocked():
    checked.ckpt.init_from = checked.ckpt.init_from or "<aot-compile>"
    checked.data.path = checked.data.path or "<aot-compile>"
  config_lib.validate(checked, len(devices), topo.hosts * slices)
  knobs = PoseConfig.from_config(config.pose)
  cfg = config_lib.wan_config(config.model)
  mesh = make_mesh(config.mesh.shape, devices, slices)
  models, teacher, lora, head = pose_models.build(cfg, knobs, config.seed, mesh, abstract=True)
  return Setup(config, topology, topo, devices, knobs, cfg, mesh, models, teacher, lora, head)


# --- compile and report -----------------------------------------------------------------------


def _compile(jitted, args, mesh: Mesh, names=()):
  """``(compiled, lower_s, compile_s)``; DoesNotFit when XLA runs out of memory."""
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


def _entry(
  s: Setup, name: str, entry: dict, flops: dict, jitted, args, names, state=None, trained=0
):
  """Compiles ``jitted(*args)``; ``entry`` plus its memory, FLOPs, times and roofline bound
  (``trained`` parameters updated), and for a train step the state leaves whose sharding would
  change; or ``fits=False`` and the error."""
  try:
    compiled, lower_s, compile_s = _compile(jitted, args, s.mesh, names)
  except DoesNotFit as e:
    print(f"[{name}] DOES NOT FIT (XLA RESOURCE_EXHAUSTED):\n{e}", flush=True)
    return dict(entry, fits=False, error=str(e), error_raw=e.raw[:20000], **flops)
  if state is not None:
    moved = resharded_state_leaves(compiled, state)
    entry = dict(entry, resharded_state_leaves=len(moved), resharded_state_examples=moved[:8])
    if moved:
      print(f"[{name}] warning: {len(moved)} state leaves change sharding, e.g. {moved[:3]}")
  mem = compiled_stats(compiled)
  if s.wan_config.attention == "splash":
    entry = dict(entry, splash_per_device=splash_shapes(compiled.as_text()))
  hbm = s.topo.chip.hbm_gib
  peak_flops = s.topo.chip.peak_tflops * 1e12 * len(s.devices)
  entry = dict(
    entry,
    fits=mem["peak_bytes"] <= hbm * GIB,
    lower_s=round(lower_s, 2),
    compile_s=round(compile_s, 2),
    **mem,
    peak_gib=round(mem["peak_bytes"] / GIB, 3),
    hbm_gib=hbm,
    **flops,
    model_tflops_per_step=float(f"{flops['model_flops'] / 1e12:.5g}"),
    step_s_at_40pct_mfu=float(f"{flops['model_flops'] / (MFU * peak_flops):.4g}"),
    **roofline(
      flops,
      cfg=s.wan_config,
      taps=s.models.taps,
      dit_state=s.teacher,
      trained_params=trained,
      micro_batches=entry.get("micro_batches", 1),
      mesh_shape=dict(s.mesh.shape),
      chip=s.topo.chip,
      devices=len(s.devices),
    ),
  )
  print(
    f"[{name}] {'fits' if entry['fits'] else 'DOES NOT FIT'}: peak {entry['peak_gib']:.2f} GiB "
    f"of {hbm} GiB/device (args {mem['argument_bytes'] / GIB:.2f}, out "
    f"{mem['output_bytes'] / GIB:.2f}, temp {mem['temp_bytes'] / GIB:.2f}); model "
    f"{entry['model_flops'] / 1e12:.4g} TFLOP/step -> {entry['step_s_at_40pct_mfu']:.2f} s at "
    f"40% MFU (roofline bound {entry['roofline_step_s']:.2f} s, {entry['roofline_bound']}); "
    f"lower {lower_s:.1f}s compile {compile_s:.1f}s",
    flush=True,
  )
  for k in entry.get("splash_per_device", ()):
    print(f"[{name}] splash per device: {k['heads']} heads x {k['queries']} queries", flush=True)
  return entry


def compile_phase(s: Setup, phase: str, start: int, stop: int) -> dict:
  """The report entry of ``phase``'s fused step (steps ``[start, stop)``), jitted as the
  trainer jits it (its optimizer's schedules span the phase)."""
  train = s.config.train
  tx = optim.make_optimizer(s.config.optim, phase, stop - start, s.knobs)
  state = state_lib.abstract_state(tx, s.teacher, s.lora, s.head, s.knobs, s.config.seed, s.mesh)
  step = steps.make_step(phase, s.knobs, s.models, tx, start, stop - start, train.micro_batches)
  batch = abstract_batch(s.shapes(train.batch_size), s.mesh)
  print(
    f"[{phase}] lowering + compiling for {s.topology} mesh {dict(s.mesh.shape)} ...", flush=True
  )
  return _entry(
    s,
    phase,
    dict(batch=train.batch_size, micro_batches=train.micro_batches),
    s.flops(phase, train.batch_size),
    steps.jit_step(step, state),
    (state, pose_models.stored_teacher(s.teacher, s.knobs), batch),
    names=("state", "teacher", "batch"),
    state=state,
    trained=sum(
      math.prod(a.shape)
      for group in phase_records.get(phase).trains(s.knobs)
      for a in jax.tree.leaves(state.params[group])
    ),
  )


def compile_sampler(s: Setup, batch: int | None = None) -> dict:
  """The report entry of the student's one-step sample; ``batch`` None: one clip per
  data x fsdp shard."""
  dp = s.mesh.shape["data"] * s.mesh.shape["fsdp"]
  sb = batch or dp
  inputs = abstract_batch(s.shapes(sb), s.mesh)

  def sample(params, noise, cond, text, image):
    return samplers.student(s.models.dit, params, noise, cond, text, image)

  note = f"global batch {sb} = one clip per data x fsdp shard ({dp})"
  entry = dict(
    batch=sb, batch_note=note if batch is None else f"global batch {sb} (--sample_batch)"
  )
  print(f"[{SAMPLE}] lowering + compiling the one-step student, batch {sb} ...", flush=True)
  return _entry(
    s,
    SAMPLE,
    entry,
    s.flops(SAMPLE, sb),
    jax.jit(sample),
    (s.teacher, inputs["latents"], inputs["cond"], inputs["text"], inputs.get("image")),
    names=("student", "noise", "cond", "text", "image"),
  )


def _header(s: Setup) -> dict:
  """The report's fields before ``phases``: the config as compiled and the topology."""
  config, knobs, cfg, topo = s.config, s.knobs, s.wan_config, s.topo
  d = config.data
  shapes = s.shapes(config.train.batch_size)
  return dict(
    config=dict(
      preset=config.model.preset,
      frames=d.frames,
      height=d.size if d.kind == "toy" else d.height,
      width=d.size if d.kind == "toy" else d.width,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      remat=cfg.remat,
      attention=cfg.attention,
      context_parallel=cfg.context_parallel,
      scan_layers=cfg.scan_layers,
      mesh=dict(s.mesh.shape),
      batch_size=config.train.batch_size,
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
        taps=list(s.models.taps),
      ),
    ),
    topology=dict(
      name=s.topology,
      slices=s.config.mesh.slices,
      topology_name=topo.topology_name,
      devices=len(s.devices),
      chips=topo.chips,
      hosts=topo.hosts,
      device_kind=s.devices[0].device_kind,
      hbm_gib_per_device=topo.chip.hbm_gib,
      peak_bf16_tflops_per_device=topo.chip.peak_tflops,
    ),
    dit_params=sum(math.prod(x.shape) for x in jax.tree.leaves(s.teacher)),
    batch_shapes={k: list(v) for k, v in shapes.items()},
    flops_convention=FLOPS_CONVENTION,
    jax_version=jax.__version__,
  )


def run(config, topology: str, phases=("all",), sample_batch: int | None = None) -> dict:
  """Compiles the requested phases (``all``, names of ``config.pose.phases``, ``sample``);
  returns the report dict (``fits`` per phase)."""
  knobs = PoseConfig.from_config(config.pose)
  check_phases(phases, knobs.phases)
  s = setup(config, topology)
  report = dict(_header(s), phases={})
  for phase, start, stop in phase_plan(s.knobs):
    if "all" in phases or phase in phases:
      report["phases"][phase] = compile_phase(s, phase, start, stop)
  if "all" in phases or SAMPLE in phases:
    report["phases"][SAMPLE] = compile_sampler(s, sample_batch)
  return report
