"""Where does the toy teacher look? The sensitivity of its velocity to the condition latent.

  python bench/toy_probe.py --workdir=DIR [--config.KEY=VALUE ...]

``DIR`` is a finished ``bench/toy_teacher.py`` run, given the same overrides (the run resumes at
its last step and trains nothing). For the held-out ``static`` and ``pan_left`` clips, at
t = 0.95 (the content must come from the condition: the noisy input holds almost none), it
takes one output token of latent frame ``f`` (three tokens near the centre) and measures
``|d v / d cond|`` over the frame-0 condition latent, summed per DiT token and normalised to 1:
the share on the token the content really comes from (``static``: the same place; a pan of
``s`` tokens per frame: ``s f`` tokens over, both tokens when that is between two) and the
share on the same place (probes whose source lies outside the frame are left out). Uniform
attention gives 1 / (tokens per frame). Prints and writes ``DIR/probe.json``.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)  # configs/ is imported relative to the repository root

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy_i2v.py", "The run's config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A finished toy_teacher.py run.", required=True)
_T = flags.DEFINE_float("t", 0.95, "Noise level of the probe.")
CENTRE = ((0, 0), (-1, 1), (1, -1))  # output tokens probed, as offsets from the centre token


def sensitivity(dit, params, b: dict, x_t, t: float, frame: int, token, patch, grid):
  """``[B, th, tw]``: ``|d v / d cond|`` of output ``token`` (i, j) of latent ``frame`` over
  the frame-0 condition latent, summed per token and normalised to 1 per clip."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from pose_jax.pose.velocity import dit_forward

  (i, j), (ph, pw), (th, tw) = token, patch, grid

  def f(cond):
    v = dit_forward(dit, params, x_t, t, cond, b["text"], b["image"])
    return v[:, frame, ph * i : ph * (i + 1), pw * j : pw * (j + 1)].sum()

  g = jnp.abs(jax.grad(f)(b["cond"])[:, 0, ..., 4:]).sum(-1)  # the frame-0 latent channels
  g = g.reshape(g.shape[0], th, ph, tw, pw).sum((2, 4))
  return np.asarray(g / g.sum((1, 2), keepdims=True))


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  from pose_jax import config as config_lib
  from pose_jax.data import source, toy
  from pose_jax.data.toy_codec import ToyCodec
  from pose_jax.pose import models as pose_models
  from pose_jax.pose.config import PoseConfig
  from pose_jax.training import train

  config, workdir = _CONFIG.value, _WORKDIR.value
  config.eval.teacher_steps = 1  # the resumed run's closing report: keep it short
  params = train.run(config, workdir).params["student"]
  _, batch = source.from_config(config, workdir)
  cfg = config_lib.wan_config(config.model)
  dit = pose_models.build(cfg, PoseConfig.from_config(config.pose))[0].dit
  p = cfg.patch_size[1] * ToyCodec.from_config(config.data).spatial_factor  # pixels per token
  speed = (config.data.get("pan_speed", 0) or toy.pan_speed(config.data.size)) / p
  keys = [str(k).split("/") for k in np.asarray(batch["key"]).ravel()]
  t = _T.value
  out = {"t": t, "tokens_per_frame": None, "pan_tokens_per_frame": speed}
  for move, step in (("static", 0.0), ("pan_left", -speed)):  # pan_left: content slides right
    idx = np.array([i for i, k in enumerate(keys) if k[0] != "footage" and k[1] == move])
    b = {k: jnp.asarray(np.asarray(batch[k])[idx]) for k in ("latents", "cond", "text", "image")}
    eps = jax.random.normal(jax.random.key(0), b["latents"].shape)
    x_t = (1 - t) * b["latents"] + t * eps
    _, frames, h, w, _ = b["latents"].shape
    th, tw = h // cfg.patch_size[1], w // cfg.patch_size[2]
    out["tokens_per_frame"] = th * tw
    ph, pw = cfg.patch_size[1:]

    for frame in range(1, frames):
      true, same = [], []
      for di, dj in CENTRE:
        i, j = th // 2 + di, tw // 2 + dj
        g = sensitivity(dit, params, b, x_t, t, frame, (i, j), (ph, pw), (th, tw))
        x = j + step * frame  # a half-token pan straddles two tokens: both count
        cols = sorted({int(np.floor(x)), int(np.ceil(x))})
        if cols[0] < 0 or cols[-1] >= tw:
          continue  # the content comes from outside the frame: nothing to point at
        true.append(g[:, i, cols].sum(-1))
        same.append(g[:, i, j])
      out[f"{move}/frame{frame}"] = {
        "true_source": round(float(np.mean(true)), 4),
        "same_place": round(float(np.mean(same)), 4),
      }
  with open(os.path.join(workdir, "probe.json"), "w") as f:
    json.dump(out, f, indent=1)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  app.run(main)
