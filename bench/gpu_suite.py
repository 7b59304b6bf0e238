"""Every GPU number in one command, as JSON: DiT speed against diffusers, a fused
training step's MFU, teacher vs student sampling, and the 14B 480p headline sample.

  python bench/gpu_suite.py [--tiny] [--out bench/results/gpu_suite.json]
      [--parts dit,step,sample,headline] [--attention auto|xla|chunked|cudnn]

  dit       t2v_1_3b DiT, 9 frames at 480x832 (latent [3, 60, 104]), bf16: forward and
            forward+backward, ours jitted vs diffusers + torch SDPA, the same random weights
  step      one fused equilibrium step of that model: steps/s and MFU (analytic FLOPs)
  sample    teacher 50 Euler steps with CFG vs the one-step student, DiT-only and end to end
  headline  one 81-frame 480x832 i2v_14b sample: encoders, DiT, VAE decode, total seconds
What each measures, and how: bench/README.md, "GPU suite". ``--tiny`` (automatic on CPU): tiny
shapes, the same code. Each part is written to the JSON as it ends; a failing part records its
error and the rest run; exit status 1 if any part failed.

Budget on one H200, an estimate (not yet run there): imports ~20 s; dit ~60 s (1.3B built,
copied through the host, 2 compiles, 6 rounds); step ~120 s, mostly compile; sample ~100 s
(real encoders built, VAE compiles, 4 teacher samples of ~4 s); headline ~150 s (14B init,
compiles of the 32,760-token DiT and the 81-frame VAE, 4 samples of ~10 s): ~7.5 min in all.

Not in the GPU image: fetch here with ``pip download --no-deps --only-binary=:all:
--python-version 3.12 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
ml-collections==1.1.0 ftfy==6.3.1 wcwidth==0.9.4`` (7 MB), carry ``.whl``, and there run first
  pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU (dit)

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.gpu_common import (  # noqa: E402
  attention_for,
  describe,
  device_info,
  dit_flops,
  latent_grid,
  on_device,
  peak_flops,
  rounds,
  versions,
  video_tokens,
  wan_config,
)
from pose_jax.aot import flops
from pose_jax.models.wan import WanTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("dit", "step", "sample", "headline")
PAPER_S = {"pose": 9.37, "teacher": 890.0}  # the paper's 480p 81-frame sample, one GPU
PROMPT, NEGATIVE = "a red car on the beach at sunset", "blue city night rain"
_FULL = dict(preset="t2v_1_3b", frames=9, size=(480, 832), text_len=512, repeats=3)
FULL = dict(
  dit=dict(_FULL, repeats=5),
  step=dict(_FULL, knobs={}),
  sample=dict(_FULL, teacher_steps=50, cfg=5.0),
  headline=dict(_FULL, preset="i2v_14b", frames=81),
  stack=("umt5_xxl", "vit_h_14", "wan2_1"),
)
_TINY = dict(preset="tiny_t2v", model=dict(num_layers=1), frames=5, size=(64, 64), text_len=16)
TINY = dict(
  dit=dict(_TINY, repeats=2),
  step=dict(_TINY, repeats=2, knobs=dict(lora_rank=4, d_width=64, d_heads=2, d_num_queries=4)),
  sample=dict(_TINY, preset="tiny", size=(32, 32), teacher_steps=50, cfg=5.0, repeats=2),
  headline=dict(_TINY, preset="tiny", size=(32, 32), repeats=2),
  stack=("tiny", "tiny", "tiny"),
)


# --- part 1: DiT forward / forward+backward, ours vs diffusers --------------------------------
def part_dit(sizes, opts) -> dict:
  import torch

  from pose_jax.convert.wan_diffusers import load_state_dict
  from tests.helpers.torch_refs import inputs, to_jax_args, torch_wan

  sz, gpu = sizes["dit"], jax.default_backend() == "gpu"
  if gpu and not torch.cuda.is_available():
    raise RuntimeError("JAX runs on the GPU but torch sees no CUDA device")
  dev = torch.device("cuda" if gpu else "cpu")
  grid, text_len = latent_grid(sz), sz["text_len"]
  cfg = wan_config(sz, dtype="bfloat16", param_dtype="bfloat16")
  impl, note = attention_for(cfg, [video_tokens(cfg, grid), text_len], opts)
  cfg = cfg.replace(attention=impl)
  with dev:
    tm = torch_wan(cfg, seed=0, noise=0.0)
  keep = tm._keep_in_fp32_modules or []  # what from_pretrained(torch_dtype=bf16) keeps fp32
  for name, p in tm.named_parameters():
    p.data = p.data.to(torch.float32 if set(keep) & set(name.split(".")) else torch.bfloat16)
  model = on_device(lambda: WanTransformer(cfg, rngs=nnx.Rngs(0)))
  load_state_dict(((k, v.float().cpu().numpy()) for k, v in tm.state_dict().items()), model)
  graphdef, params = nnx.split(model)
  inp = inputs(cfg, batch=1, frames=grid[0], height=grid[1], width=grid[2], text_len=text_len)
  x, t, txt, _ = (None if a is None else jnp.asarray(a) for a in to_jax_args(inp))
  tin = {k: v.to(dev, torch.float32 if k == "timestep" else torch.bfloat16) for k, v in inp.items()}
  sync = torch.cuda.synchronize if gpu else lambda: None
  fwd = jax.jit(lambda p: nnx.merge(graphdef, p)(x, t, txt))
  loss = lambda p: jnp.mean(jnp.square(nnx.merge(graphdef, p)(x, t, txt).astype(jnp.float32)))
  fwdbwd = jax.jit(jax.value_and_grad(loss))

  def torch_fwd():
    with torch.no_grad():
      out = tm(**tin, return_dict=False)[0]
    sync()
    return out

  def torch_fwdbwd():
    tm.zero_grad(set_to_none=True)
    tm(**tin, return_dict=False)[0].float().square().mean().backward()
    sync()

  fns = dict(jax_fwd=lambda: jax.block_until_ready(fwd(params)), torch_fwd=torch_fwd)
  fns.update(jax_fwdbwd=lambda: jax.block_until_ready(fwdbwd(params)), torch_fwdbwd=torch_fwdbwd)
  res = rounds(fns, sz["repeats"])
  ours = np.asarray(fwd(params).astype(jnp.float32))
  theirs = torch_fwd().float().cpu().numpy().transpose(0, 2, 3, 4, 1)
  fl = {k: dit_flops(cfg, grid, text_len, 0, b) for k, b in (("fwd", "none"), ("fwdbwd", "full"))}
  achieved = {k: fl[k.split("_")[1]] / v["median_s"] for k, v in res.items()}
  peak = peak_flops()
  return dict(
    describe(sz, cfg, params, impl, note),
    torch_attention="diffusers' default dispatch: torch SDPA",
    weights="the same random weights (diffusers' init, copied into ours)",
    text_len=text_len,
    times=res,
    ratio_fwd=res["jax_fwd"]["median_s"] / res["torch_fwd"]["median_s"],
    ratio_fwdbwd=res["jax_fwdbwd"]["median_s"] / res["torch_fwdbwd"]["median_s"],
    model_flops=fl,
    tflops_per_s={k: v / 1e12 for k, v in achieved.items()},
    mfu={k: v / peak for k, v in achieved.items()} if peak else None,
    output_rel_err=float(np.abs(ours - theirs).max() / np.abs(theirs).max()),
  )


# --- part 2: one fused equilibrium step -------------------------------------------------------
def part_step(sizes, opts) -> dict:
  from configs import common
  from pose_jax.pose import models as pose_models
  from pose_jax.pose.config import PoseConfig
  from pose_jax.training import optim, steps
  from pose_jax.training import state as state_lib

  sz = sizes["step"]
  grid, text_len = latent_grid(sz), sz["text_len"]
  cfg = wan_config(sz, dtype="bfloat16", remat="full")
  impl, note = attention_for(cfg, [video_tokens(cfg, grid), text_len], opts)
  cfg, knobs = cfg.replace(attention=impl), PoseConfig(**sz["knobs"])
  models, teacher, lora, head = pose_models.build(cfg, knobs)
  tx = optim.make_optimizer(common.base().optim, "equilibrium", knobs.steps[-1], knobs)
  init = functools.partial(state_lib.init_state, tx, knobs=knobs, seed=1)
  live = dict(state=jax.jit(init)(teacher, lora, head), metrics=None)
  teacher = pose_models.stored_teacher(teacher, knobs)  # as the trainer passes it
  k1, k2 = jax.random.split(jax.random.key(0))
  batch = dict(
    latents=jax.random.normal(k1, (1, *grid, cfg.out_channels)),
    text=jax.random.normal(k2, (1, text_len, cfg.text_dim)),
    neg_text=jnp.zeros((1, text_len, cfg.text_dim)),
  )
  step = steps.make_step("equilibrium", knobs, models, tx, 0, knobs.steps[-1])
  t0 = time.perf_counter()
  compiled = steps.jit_step(step, live["state"]).lower(live["state"], teacher, batch).compile()
  compile_s = time.perf_counter() - t0
  cost, mem = compiled.cost_analysis(), compiled.memory_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost or {}

  def one():
    live["state"], live["metrics"] = compiled(live["state"], teacher, batch)
    jax.block_until_ready(live)

  res = dict(rounds({"step": one}, sz["repeats"])["step"], compile_s=compile_s)
  fl = flops.phase_flops("equilibrium", knobs, cfg, models.taps, 1, grid, text_len, 0)
  peak = peak_flops()
  return dict(
    describe(sz, cfg, teacher, impl, note),
    phase="equilibrium",
    knobs=sz["knobs"] or "PoseConfig() defaults",
    text_len=text_len,
    times=res,
    steps_per_s=1.0 / res["median_s"],
    finite=bool(live["metrics"]["finite"] > 0),
    model_flops=fl["model_flops"],
    remat_recompute_flops=fl["remat_recompute_flops"],
    xla_flops=cost.get("flops"),
    peak_flops=peak,
    mfu=fl["model_flops"] / res["median_s"] / peak if peak else None,
    memory_gib={
      k: getattr(mem, f"{k}_size_in_bytes") / 2**30 for k in ("argument", "output", "temp")
    },
  )


# --- parts 3 and 4: sampling through I2VPipeline ----------------------------------------------
@functools.cache
def make_stack(text: str, image: str, vae: str):
  """A ConditioningStack of random encoders and VAE at these presets (made once)."""
  from pose_jax.conditioning import ConditioningStack
  from pose_jax.models.encoders import CLIPVisionEncoder, UMT5Encoder, clip_vision, umt5
  from pose_jax.models.wan.vae import WanVAE
  from pose_jax.models.wan.vae import config as vae_config
  from tests.helpers.tiny import tokenizer

  clip_cfg, text_cfg = (
    clip_vision.preset(image, dtype="bfloat16"),
    umt5.preset(text, dtype="bfloat16"),
  )
  vae_cfg = vae_config.preset(vae, dtype="bfloat16", param_dtype="bfloat16")
  return ConditioningStack(
    vae=on_device(lambda: WanVAE(vae_cfg, rngs=nnx.Rngs(1)), 1),
    image_encoder=on_device(lambda: CLIPVisionEncoder(clip_cfg, rngs=nnx.Rngs(2)), 2),
    text_encoder=on_device(lambda: UMT5Encoder(text_cfg, rngs=nnx.Rngs(3)), 3),
    tokenizer=tokenizer(),
    clip_preprocess=dict(shortest_edge=clip_cfg.image_size, crop_size=(clip_cfg.image_size,) * 2),
  )


def make_pipeline(sizes, name, opts):
  """``(pipe, (image, video, noise), info)``: the stack and a random bf16 DiT for ``name``."""
  from pose_jax.sampling.pipeline import I2VPipeline

  sz, t0 = sizes[name], time.perf_counter()
  stack = make_stack(*sizes["stack"])
  cfg = wan_config(sz, dtype="bfloat16", param_dtype="bfloat16", **stack.dit_inputs())
  grid, clip = latent_grid(sz), stack.image_encoder.cfg
  image_len = (clip.image_size // clip.patch_size) ** 2 + 1
  impl, note = attention_for(cfg, [video_tokens(cfg, grid), 512, image_len], opts)
  cfg = cfg.replace(attention=impl)
  pipe = I2VPipeline.from_model(stack, on_device(lambda: WanTransformer(cfg, rngs=nnx.Rngs(0))))
  video = dict(num_frames=sz["frames"], height=sz["size"][0], width=sz["size"][1])
  image = np.random.default_rng(0).integers(0, 256, (*sz["size"], 3), np.uint8)
  noise = pipe.make_noise(pipe.latent_shape(1, **video), seed=0)
  info = dict(
    describe(sz, cfg, pipe.params, impl, note),
    stack=dict(zip(("text_encoder", "image_encoder", "vae"), sizes["stack"])),
    dit_forward_flops=dit_flops(cfg, grid, 512, image_len),
    build_s=time.perf_counter() - t0,
  )
  return pipe, (image, video, noise), info


def staged(pipe, image, video, noise, run, negative=None) -> dict:
  """One sample, stage by stage (``block_until_ready`` after each): seconds per stage."""
  from pose_jax.conditioning import Conditioning

  st, out, marks = pipe.stack, {}, [time.perf_counter()]

  def lap(name, value):
    jax.block_until_ready(value)
    marks.append(time.perf_counter())
    out[name] = marks[-1] - marks[-2]
    return value

  texts = lap("text_encoder", [st.encode_text([p]) for p in (PROMPT, negative) if p is not None])
  tokens = lap("image_encoder", st.encode_image([image]))
  cond = lap("vae_encode", st.encode_condition([image], **video))
  neg = texts[1] if negative is not None else None
  c = Conditioning(cond=cond, image_tokens=tokens, text_tokens=texts[0], negative_text_tokens=neg)
  latents = lap("dit", pipe.sample_latents(c, noise, **run))
  lap("to_host", np.asarray(lap("vae_decode", pipe.decode(latents))))
  out["encoders"] = out["text_encoder"] + out["image_encoder"] + out["vae_encode"]
  out["total"] = marks[-1] - marks[0]
  return out


def part_sample(sizes, opts) -> dict:
  pipe, (image, video, noise), info = make_pipeline(sizes, "sample", opts)
  sz = sizes["sample"]
  teacher = dict(mode="teacher", steps=sz["teacher_steps"], guidance_scale=sz["cfg"])
  student = dict(mode="student", steps=1)
  res = rounds(
    dict(
      teacher=lambda: staged(pipe, image, video, noise, teacher, NEGATIVE),
      student=lambda: staged(pipe, image, video, noise, student),
    ),
    sz["repeats"],
  )
  dit = {k: v["seconds"]["dit"] for k, v in res.items()}
  return dict(
    info,
    teacher=dict(teacher, scheduler="euler", dit_calls=2 * sz["teacher_steps"]),
    student=dict(student, dit_calls=1),
    times=res,
    dit_s=dit,
    dit_ratio=dit["teacher"] / dit["student"],
    end_to_end_ratio=res["teacher"]["median_s"] / res["student"]["median_s"],
  )


def part_headline(sizes, opts) -> dict:
  pipe, (image, video, noise), info = make_pipeline(sizes, "headline", opts)
  run = dict(mode="student", steps=1)
  res = rounds(dict(sample=lambda: staged(pipe, image, video, noise, run)), info["repeats"])
  seconds, peak = res["sample"]["seconds"], peak_flops()
  return dict(
    info,
    seconds=seconds,
    times=res["sample"],
    paper_s=PAPER_S,
    total_vs_paper_pose=seconds["total"] / PAPER_S["pose"],
    dit_mfu=info["dit_forward_flops"] / seconds["dit"] / peak if peak else None,
  )


PART_FNS = dict(dit=part_dit, step=part_step, sample=part_sample, headline=part_headline)


# --- driver -----------------------------------------------------------------------------------
def short(v):
  if isinstance(v, dict):
    return {k: short(x) for k, x in v.items()}
  return round(v, 4) if isinstance(v, float) else v


def shown(name: str, r: dict):
  """The figures printed for a part (all of them are in the JSON)."""
  keys = dict(dit=("ratio_fwd", "ratio_fwdbwd"), step=("steps_per_s", "mfu"))
  keys.update(sample=("dit_ratio", "end_to_end_ratio"), headline=("seconds", "paper_s"))
  return r.get("error") or {k: short(r[k]) for k in keys[name]}


def write(path: str, report: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(report, f, indent=1, default=float)
  os.replace(path + ".tmp", path)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  ap.add_argument("--tiny", action="store_true", help="tiny shapes (automatic on CPU)")
  ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gpu_suite.json"))
  ap.add_argument("--parts", default=",".join(PARTS))
  ap.add_argument("--attention", default="auto", choices=("auto", "xla", "chunked", "cudnn"))
  opts = ap.parse_args(argv)
  parts = opts.parts.split(",")
  if set(parts) - set(PARTS):
    ap.error(f"--parts: a comma list from {','.join(PARTS)}")
  tiny = opts.tiny or jax.default_backend() == "cpu"
  sizes = TINY if tiny else FULL
  argv = sys.argv if argv is None else [sys.argv[0], *argv]
  report = dict(argv=argv, tiny=tiny, device=device_info(), versions=versions(), parts={})
  report.update(failed=[], ratios="ratio_* = jax / torch time; *_ratio = teacher / student")
  start = time.perf_counter()
  for name in parts:
    t0 = time.perf_counter()
    print(f"[{name}] running", flush=True)
    try:
      res = PART_FNS[name](sizes, opts)
    except Exception as e:  # recorded; the suite goes on
      res = dict(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
      report["failed"].append(name)
    res["elapsed_s"] = time.perf_counter() - t0
    report["parts"][name], report["elapsed_s"] = res, time.perf_counter() - start
    write(opts.out, report)
    print(f"[{name}] {res['elapsed_s']:.1f} s: {shown(name, res)}", flush=True)
    gc.collect()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
      sys.modules["torch"].cuda.empty_cache()
  summary = {n: shown(n, r) for n, r in report["parts"].items()}
  print(json.dumps(dict(summary, elapsed_s=round(report["elapsed_s"], 1), out=opts.out), indent=1))
  return 1 if report["failed"] else 0


if __name__ == "__main__":
  sys.exit(main())
