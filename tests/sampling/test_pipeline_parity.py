"""The JAX I2V pipeline against diffusers' ``WanImageToVideoPipeline`` end to end.

Both are given the same tiny random pipeline folder (``tests.helpers.tiny.tiny_pipeline``)
and the same initial latents (``latents=`` channels-first there, ``noise=`` channels-last here);
outputs are compared on ``output_type="np"`` (video in [0, 1]).
"""

import numpy as np
import pytest
import torch
from PIL import Image

from pose_jax.pose import timesteps
from pose_jax.sampling import samplers
from pose_jax.sampling.pipeline import I2VPipeline
from tests.helpers.tiny import make_image, tiny_pipeline, write_train_workdir

H, W, F = 32, 48, 5
PROMPT, NEGATIVE = "a cat runs on the beach at sunset", "red car in the rain"
TOL = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  pipe = tiny_pipeline()
  folder = tmp_path_factory.mktemp("wan_i2v_pipe")
  pipe.save_pretrained(folder)
  ours = I2VPipeline.from_pretrained(str(folder))
  noise = np.random.default_rng(0).standard_normal(ours.latent_shape(1, F, H, W))
  return pipe, str(folder), ours, noise.astype(np.float32), make_image()


def torch_video(pipe, image, noise, steps, guidance_scale, negative=NEGATIVE):
  latents = torch.from_numpy(noise.transpose(0, 4, 1, 2, 3).copy())
  return pipe(
    image=Image.fromarray(image),
    prompt=PROMPT,
    negative_prompt=negative,
    height=H,
    width=W,
    num_frames=F,
    num_inference_steps=steps,
    guidance_scale=guidance_scale,
    latents=latents,
    output_type="np",
  ).frames


def jax_video(ours, image, noise, **kw):
  return ours(image, PROMPT, num_frames=F, height=H, width=W, noise=noise, **kw)


@pytest.mark.parametrize("steps,guidance_scale", [(1, 1.0), (4, 1.0), (4, 3.5)])
def test_euler_matches_diffusers(setup, steps, guidance_scale):
  pipe, _, ours, noise, image = setup
  ref = torch_video(pipe, image, noise, steps, guidance_scale)
  kw = dict(mode="teacher", guidance_scale=guidance_scale, shift=3.0, negative_prompt=NEGATIVE)
  got = jax_video(ours, image, noise, steps=steps, **kw)
  assert got.shape == ref.shape == (1, F, H, W, 3) and got.dtype == np.float32
  err = float(np.abs(got - ref).max())
  print(f"euler steps={steps} guidance_scale={guidance_scale}: max abs err {err:.2e}")
  assert err <= TOL
  if steps == 1:  # the student's one step from t = 1 is one Euler step
    student = jax_video(ours, image, noise, steps=1)
    assert float(np.abs(student - ref).max()) <= TOL


def test_model_timesteps_are_diffusers(setup):
  """FlowMatchEuler passes ``sigma * 1000`` in float32 (no integer cast) = our ``1000 t``."""
  pipe, _, _, noise, image = setup
  seen = []
  hook = pipe.transformer.register_forward_pre_hook(
    lambda m, args, kw: seen.append(kw["timestep"].clone()), with_kwargs=True
  )
  try:
    torch_video(pipe, image, noise, 4, 1.0)
  finally:
    hook.remove()
  ours = np.asarray(timesteps.to_model_time(samplers.euler_times(4, 3.0)[:-1]), np.float32)
  theirs = np.stack([t.numpy() for t in seen])
  assert theirs.dtype == np.float32 and theirs.shape == (4, 1)
  np.testing.assert_array_equal(theirs[:, 0], ours)


def test_unipc_matches_diffusers(setup):
  pytest.importorskip("pose_jax.sampling.unipc")
  from diffusers import UniPCMultistepScheduler

  pipe, _, ours, noise, image = setup
  euler = pipe.scheduler
  pipe.scheduler = UniPCMultistepScheduler(
    prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
  )
  seen = []
  hook = pipe.transformer.register_forward_pre_hook(
    lambda m, args, kw: seen.append(kw["timestep"].clone()), with_kwargs=True
  )
  try:
    ref = torch_video(pipe, image, noise, 4, 1.0)
    ref_cfg = torch_video(pipe, image, noise, 4, 3.5)
  finally:
    pipe.scheduler = euler
    hook.remove()
  # UniPC hands the DiT int64 timesteps int(1000 sigma) (999 first, not 1000).
  assert seen[0].dtype == torch.int64 and int(seen[0][0]) == 999
  kw = dict(steps=4, mode="teacher", scheduler="unipc", shift=3.0, negative_prompt=NEGATIVE)
  errs = [
    float(np.abs(jax_video(ours, image, noise, guidance_scale=g, **kw) - r).max())
    for g, r in ((1.0, ref), (3.5, ref_cfg))
  ]
  print(f"unipc 4 steps: max abs err guidance 1 {errs[0]:.2e}, 3.5 {errs[1]:.2e}")
  assert max(errs) <= TOL


def test_exported_student_one_step_in_diffusers(setup, tmp_path):
  """Train workdir -> ``convert export --format=diffusers`` -> WanImageToVideoPipeline, 1 step
  == our student's one step from the same workdir."""
  from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

  from pose_jax.convert.cli import main as convert

  pipe, folder, _, noise, image = setup
  work = write_train_workdir(folder, tmp_path / "work")
  out = tmp_path / "export"
  args = [f"--src={work}", f"--dst={out}", f"--config={folder}/transformer/config.json"]
  assert convert(["export", *args, "--format=diffusers", "--noprogress"]) == 0
  student = WanTransformer3DModel.from_pretrained(out).eval()
  exported = WanImageToVideoPipeline(**{**pipe.components, "transformer": student})
  ref = torch_video(exported, image, noise, 1, 1.0)
  ours = I2VPipeline.from_pretrained(folder, ckpt=str(work))
  got = jax_video(ours, image, noise, steps=1)
  teacher = torch_video(pipe, image, noise, 1, 1.0)
  err = float(np.abs(got - ref).max())
  print(f"exported student 1 step: max abs err {err:.2e}")
  assert err <= TOL and float(np.abs(teacher - ref).max()) > 100 * TOL  # really the student
