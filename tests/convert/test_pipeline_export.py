"""``convert export --format=diffusers --pipeline=DIR``: a whole pipeline folder that diffusers
loads with the student as its transformer, marked one-step."""

import json

import numpy as np
import torch

from pose_jax.convert import cli, importer
from pose_jax.models.wan import preset
from tests.helpers.tiny import tiny_pipeline
from tests.helpers.torch_refs import torch_wan


def test_the_folder_loads_in_diffusers_with_the_student(tmp_path, capsys):
  from diffusers import WanImageToVideoPipeline

  teacher = tiny_pipeline()
  teacher.save_pretrained(tmp_path / "teacher")
  student = torch_wan(preset("tiny"), seed=11)  # the tiny pipeline's architecture, other weights
  student.save_pretrained(tmp_path / "student_diffusers")
  importer.import_checkpoint(str(tmp_path / "student_diffusers"), tmp_path / "s", progress=False)
  args = ["export", f"--src={tmp_path / 's'}", f"--pipeline={tmp_path / 'teacher'}"]
  assert cli.main([*args, f"--dst={tmp_path / 'out'}", "--noprogress"]) == 0
  pipe = WanImageToVideoPipeline.from_pretrained(tmp_path / "out")
  got, want = pipe.transformer.state_dict(), student.state_dict()
  assert got.keys() == want.keys()
  for k in want:
    torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
  vae, ref = pipe.vae.state_dict(), teacher.vae.state_dict()
  assert all(torch.equal(vae[k], ref[k]) for k in ref)
  assert type(pipe.scheduler) is type(teacher.scheduler)
  index = json.loads((tmp_path / "out" / "model_index.json").read_text())
  assert (
    index["_pose_jax"]["num_inference_steps"] == 1 and index["_pose_jax"]["guidance_scale"] == 1
  )
  # One step of the pipeline's own scheduler from noise is the student's x0 = x1 - v.
  pipe.scheduler.set_timesteps(1)
  x1, v = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 16, 2, 4, 4)
  t = pipe.scheduler.timesteps[0]
  x0 = pipe.scheduler.step(v, t, x1, return_dict=False)[0]
  np.testing.assert_allclose(x0.numpy(), (x1 - v).numpy(), rtol=1e-5, atol=1e-5)
  # Not a pipeline folder, a wrong format, an existing foreign --dst: refused.
  assert cli.main([*args[:2], f"--pipeline={tmp_path / 's'}", f"--dst={tmp_path / 'x'}"]) == 1
  assert "not a diffusers pipeline folder" in capsys.readouterr().err
  assert cli.main([*args, "--format=wan", f"--dst={tmp_path / 'x'}"]) == 2
  assert cli.main([*args, f"--dst={tmp_path / 'teacher'}", "--overwrite"]) == 1
  assert "is not a pose_jax one-step pipeline export" in capsys.readouterr().err
