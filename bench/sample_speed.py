"""Teacher (50 Euler steps with CFG: 100 DiT evaluations) vs one-step student sampling, same
model, same machine, one run.

  python bench/sample_speed.py [--repeats 3] [--teacher_steps 50] [--cfg 5.0]
      [--frames 9] [--size 128] [--layers 8]

A randomly initialised Wan2.1-I2V-shaped stack, scaled down so the whole comparison runs in
about five minutes on a 2-core CPU: DiT D=640 (10 heads x 64), ``--layers`` layers, FFN 2560,
the real 512 text + 257 image context tokens; UMT5 (d_model 512, 2 layers), CLIP ViT (224/14,
width 256, 2 layers), Wan VAE with base_dim 8 and the real z_dim 16. Video ``--frames`` x
``--size`` px (9 x 128 x 128: 3 x 8 x 8 = 192 DiT tokens). Sized so that, as at Wan2.1-14B
480p, the VAE (encode + decode) and encoders of a one-step sample cost a few DiT calls: the
DiT dominates the teacher completely and the student not at all. The same weights serve as
teacher and student (speed does not depend on them).

Times (medians of ``--repeats`` after a warm-up that compiles; jit-compiled throughout):
  dit        the sampler only (``I2VPipeline.sample_latents``): the teacher's 100 DiT calls vs
             the student's 1
  end_to_end ``I2VPipeline.__call__``: text (+ negative prompt for CFG) and image encoders, VAE
             encode of the condition video, sampler, VAE decode
  parts      encode / decode alone, to see where a one-step sample's time goes
Writes bench/results/sample_speed.json and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DIT = dict(num_heads=10, head_dim=64, ffn_dim=2560, text_dim=512, image_dim=256, freq_dim=256)
UMT5 = dict(vocab_size=64, d_model=512, d_kv=64, d_ff=1024, num_layers=2, num_heads=8)
CLIP = dict(hidden_size=256, intermediate_size=1024, num_layers=2, num_heads=4)
VAE = dict(base_dim=8, z_dim=16)


def build(layers: int):
  """``I2VPipeline`` with random weights (see the module docstring)."""
  from flax import nnx

  from pose_jax.conditioning import ConditioningStack
  from pose_jax.models.encoders import CLIPVisionConfig, CLIPVisionEncoder, UMT5Config, UMT5Encoder
  from pose_jax.models.wan import WanTransformer, preset
  from pose_jax.models.wan.vae import WanVAE, WanVAEConfig
  from pose_jax.sampling.pipeline import I2VPipeline
  from tests.helpers.tiny import tokenizer

  rngs = nnx.Rngs(0)
  stack = ConditioningStack(
    vae=WanVAE(WanVAEConfig(**VAE), rngs=rngs),
    image_encoder=CLIPVisionEncoder(CLIPVisionConfig(**CLIP), rngs=rngs),
    text_encoder=UMT5Encoder(UMT5Config(**UMT5), rngs=rngs),
    tokenizer=tokenizer(),
    clip_preprocess=dict(shortest_edge=224, crop_size=(224, 224)),
  )
  dit = WanTransformer(preset("i2v_14b", num_layers=layers, **DIT), rngs=rngs)
  return I2VPipeline.from_model(stack, dit)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--teacher_steps", type=int, default=50)
  ap.add_argument("--cfg", type=float, default=5.0)
  ap.add_argument("--frames", type=int, default=9)
  ap.add_argument("--size", type=int, default=128)
  ap.add_argument("--layers", type=int, default=8)
  ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "sample_speed.json"))
  args = ap.parse_args()

  import jax
  import numpy as np

  pipe = build(args.layers)
  image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)
  prompt, negative = "a red car on the beach at sunset", "blue city night rain"
  video = dict(num_frames=args.frames, height=args.size, width=args.size)
  shape = pipe.latent_shape(1, **video)
  noise = pipe.make_noise(shape, seed=0)
  runs = {
    "teacher": dict(
      mode="teacher", steps=args.teacher_steps, guidance_scale=args.cfg, scheduler="euler"
    ),
    "student": dict(mode="student", steps=1),
  }
  conds = {
    "teacher": pipe.encode(image, prompt, negative_prompt=negative, **video),
    "student": pipe.encode(image, prompt, **video),
  }

  def dit(name):
    return lambda: jax.block_until_ready(pipe.sample_latents(conds[name], noise, **runs[name]))

  def end_to_end(name):
    kw = dict(runs[name], negative_prompt=negative if name == "teacher" else None)
    return lambda: jax.block_until_ready(
      pipe(image, prompt, noise=noise, output_type="raw", **video, **kw)
    )

  latents = pipe.sample_latents(conds["student"], noise, **runs["student"])
  fns = {
    "dit_teacher": dit("teacher"),
    "dit_student": dit("student"),
    "e2e_teacher": end_to_end("teacher"),
    "e2e_student": end_to_end("student"),
    "encode_teacher": lambda: jax.block_until_ready(
      pipe.encode(image, prompt, negative_prompt=negative, **video)
    ),
    "encode_student": lambda: jax.block_until_ready(pipe.encode(image, prompt, **video)),
    "decode": lambda: jax.block_until_ready(pipe.decode(latents)),
  }
  first_s = {}
  for name, fn in fns.items():  # warm-up: compiles (the teacher's 100 DiT calls in one jit)
    if name.startswith("e2e"):
      continue  # made of the pieces warmed up here
    t0 = time.perf_counter()
    fn()
    first_s[name] = time.perf_counter() - t0
    print(f"warm-up {name:15s} {first_s[name]:8.2f} s", flush=True)
  times = {k: [] for k in fns}
  for _ in range(args.repeats):  # interleaved rounds: background load hits all alike
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  med = {k: statistics.median(v) for k, v in times.items()}
  dit_calls = args.teacher_steps * (2 if args.cfg != 1.0 else 1)
  result = dict(
    what="teacher Euler with CFG vs one-step student; same random I2V model",
    dit_config=dict(DIT, num_layers=args.layers, dim=pipe.wan_config.dim),
    umt5=UMT5,
    clip=CLIP,
    vae=VAE,
    video=dict(video, latent_shape=list(shape), dit_tokens=int(np.prod(shape[1:4])) // 4),
    teacher=dict(steps=args.teacher_steps, cfg=args.cfg, dit_calls=dit_calls),
    student=dict(steps=1, dit_calls=1),
    dit_params=int(sum(np.prod(a.shape) for a in jax.tree.leaves(pipe.params))),
    repeats=args.repeats,
    machine=f"{platform.machine()} {os.cpu_count()} cores ({jax.devices()[0].platform})",
    jax=jax.__version__,
    median_s=med,
    all_s=times,
    first_call_s=first_s,
    dit_ratio=med["dit_teacher"] / med["dit_student"],
    end_to_end_ratio=med["e2e_teacher"] / med["e2e_student"],
    student_e2e_share=dict(
      dit=med["dit_student"] / med["e2e_student"],
      encode=med["encode_student"] / med["e2e_student"],
      decode=med["decode"] / med["e2e_student"],
    ),
  )
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  for k, v in med.items():
    print(f"{k:15s} {v:9.3f} s")
  print(
    f"teacher/student: DiT-only {result['dit_ratio']:.1f}x ({dit_calls} vs 1 DiT calls), "
    f"end-to-end {result['end_to_end_ratio']:.1f}x"
  )


if __name__ == "__main__":
  main()
