"""Does the toy teacher follow its prompts? Train it, sample every held-out clip, name the moves.

  python bench/toy_teacher.py --name=NAME --workdir=DIR [--config.KEY=VALUE ...]

Runs ``training.train.run`` on ``--config`` with the overrides given (for a teacher-only run
from scratch pass ``--config=configs/toy_i2v.py:scratch --config.pose.phases='("pretrain",)'
--config.pose.steps='(N,)'``),
then samples the pretrained teacher (the trained student of the pretrain phase) on every
held-out toy clip with ``--teacher_steps`` Euler steps and CFG ``--cfg`` from fixed noise, and
scores the decoded samples: ``motion_accuracy`` (``evaluators.camera_move`` names the caption's
move), first-frame PSNR against the condition image, the confusion of moves. Appends one row
(name, the overrides, wall time of the training, the scores) to ``--out``
(``bench/results/toy_teacher.json``; a row of the same name is replaced) and the frames of each
real clip beside its sample to ``WORKDIR/teacher_samples.png``. ``--score_step=N`` trains
nothing: it scores step N of the run in ``--workdir`` (finished or still running; pass the
same ``--config`` overrides), e.g. at another ``--cfg``. ``--save_teacher=DIR`` writes the
scored weights as a model checkpoint (what ``ckpt.init_from`` and ``bench/ablations.py
--teacher`` read; its ``source`` records this row's name, the whole command and the step).
"""

from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)  # configs/ is imported relative to the repository root

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/toy_i2v.py", "Experiment config.")
_NAME = flags.DEFINE_string("name", None, "Row name in --out.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (fresh: no resume).", required=True)
_STEPS = flags.DEFINE_integer("teacher_steps", 50, "Euler steps of the teacher sample.")
_CFG = flags.DEFINE_float("cfg", 3.0, "Classifier-free guidance scale of the teacher sample.")
_STEP = flags.DEFINE_integer(
  "score_step", None, "Score this checkpoint step of --workdir (the student) without training."
)
_SAVE = flags.DEFINE_string(
  "save_teacher", None, "Also write the scored teacher here as a model checkpoint (ckpt.init_from)."
)
COMMAND = (
  "python bench/toy_teacher.py --name=NAME --workdir=DIR [--config=FILE[:ARG]]"
  " [--config.KEY=VALUE ...] (each row's argv is its whole command)"
)
_OUT = flags.DEFINE_string("out", os.path.join(ROOT, "bench", "results", "toy_teacher.json"), "")


def score(config, workdir: str, teacher, steps: int, guidance: float) -> dict:
  """The teacher's samples of every held-out clip, scored (see the module docstring)."""
  import numpy as np

  from pose_jax import config as config_lib
  from pose_jax import evaluators
  from pose_jax.data import records
  from pose_jax.data.toy_codec import ToyCodec
  from pose_jax.pose import models as pose_models
  from pose_jax.pose.config import PoseConfig
  from pose_jax.training import evals

  eval_dir = os.path.join(workdir, "data", "eval")
  n = records.read_meta(eval_dir)["num_examples"]
  it = records.make_iterator(eval_dir, n, shuffle=False, shard_by_process=False, with_strings=True)
  batch = next(it)
  it.close()
  knobs = PoseConfig.from_config(config.pose)
  models = pose_models.build(config_lib.wan_config(config.model), knobs)[0]  # the graphdefs
  x = evals.teacher_sample(
    models, teacher, batch, steps=steps, shift=knobs.flow_shift, guidance=guidance
  )
  codec, moves = ToyCodec.from_config(config.data), evals.toy_moves(batch)
  video = np.clip(np.asarray(codec.decode(np.asarray(x))), -1, 1)
  real = np.asarray(codec.decode(np.asarray(batch["latents"])))
  photo = [i for i, m in enumerate(moves) if m is not None]  # real footage names no move
  found = evaluators.camera_move((video[photo] + 1) / 2)
  from PIL import Image

  from pose_jax.sampling import video_io

  strips = [video_io.strip(np.concatenate([r, v], axis=2) / 2 + 0.5) for r, v in zip(real, video)]
  Image.fromarray(np.concatenate(strips)).save(os.path.join(workdir, "teacher_samples.png"))
  metrics = evals.toy_metrics(video, real, moves)
  return {
    **metrics,
    **text_effect(models, teacher, batch, moves),
    "clips": n,
    "correct": int(sum(f == moves[i] for f, i in zip(found.move, photo))),
    "mean_fit": float(np.mean(found.fit)),  # R^2 of the camera model (< 0.5: "none")
    "found": {str(batch["key"][i]): str(f) for i, f in zip(photo, found.move)},
  }


def text_effect(models, teacher, batch: dict, moves: list[str]) -> dict:
  """How much the teacher's velocity depends on the caption: at t = 0.9 and 0.5, mean
  |v(own caption) - v(the same photo's next move)| and |v(own) - v(empty prompt)|, each over
  mean |v(own)| (0: the move words change nothing), over the photo clips."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from pose_jax.pose.velocity import dit_forward

  photo = np.array([i for i, m in enumerate(moves) if m is not None])
  batch = {k: np.asarray(v)[photo] for k, v in batch.items()}
  moves = [moves[i] for i in photo]
  keys = [str(k) for k in np.asarray(batch["key"]).ravel()]
  where = {k.rsplit("/", 1)[0]: i for i, k in enumerate(keys)}
  order = list(dict.fromkeys(moves))
  other = [
    where[f"{k.split('/')[0]}/{order[(order.index(m) + 1) % len(order)]}"]
    for k, m in zip(keys, moves)
  ]
  x0 = jnp.asarray(batch["latents"])
  eps = jax.random.normal(jax.random.key(1), x0.shape)
  f = jax.jit(
    lambda x, t, text: dit_forward(models.dit, teacher, x, t, batch["cond"], text, batch["image"])
  )
  out = {}
  for t in (0.9, 0.5):
    x = (1 - t) * x0 + t * eps
    v = f(x, t, batch["text"])
    v_move = f(x, t, jnp.asarray(batch["text"])[np.asarray(other)])
    v_neg = f(x, t, batch["neg_text"])
    scale = float(jnp.mean(jnp.abs(v)))
    out[f"move_effect_t{t}"] = float(jnp.mean(jnp.abs(v - v_move))) / scale
    out[f"prompt_effect_t{t}"] = float(jnp.mean(jnp.abs(v - v_neg))) / scale
  return out


def main(argv):
  del argv
  import jax
  from flax import nnx

  from pose_jax import config as config_lib
  from pose_jax.training import train

  config = _CONFIG.value
  cfg = config_lib.wan_config(config.model)
  if _STEP.value is None:
    t0 = time.perf_counter()
    state = train.run(config, _WORKDIR.value)
    wall = time.perf_counter() - t0
    teacher = jax.tree.map(lambda a: a, state.params["student"])
  else:  # a saved step of an earlier (or still running) run
    from pose_jax.sampling import loading

    model, _ = loading.load_dit(_WORKDIR.value, which="student", step=_STEP.value, config=cfg)
    teacher, wall = nnx.state(model), None
  row = {
    "name": _NAME.value,
    "overrides": [a for a in sys.argv[1:] if a.startswith("--config.")],
    "argv": sys.argv[1:],  # the whole command (the config file and its argument too)
    "train_wall_s": None if wall is None else round(wall, 1),
    "step": _STEP.value,
    "teacher_steps": _STEPS.value,
    "cfg": _CFG.value,
    **score(config, _WORKDIR.value, teacher, _STEPS.value, _CFG.value),
  }
  if _SAVE.value:
    from pose_jax.convert import orbax_io

    source = {"bench": "toy_teacher", **{k: row[k] for k in ("name", "argv", "step")}}
    meta = orbax_io.model_meta(cfg, source)
    orbax_io.save_model_checkpoint(_SAVE.value, nnx.to_pure_dict(teacher), meta, overwrite=True)
  rows = []
  if os.path.isfile(_OUT.value):
    with open(_OUT.value) as f:
      rows = [r for r in json.load(f)["rows"] if r["name"] != row["name"]]
  rows.append(row)
  with open(_OUT.value, "w") as f:
    json.dump({"command": COMMAND, "rows": rows}, f, indent=1)
  short = {k: row[k] for k in ("name", "train_wall_s", "correct", "clips")}
  short.update({k: round(row[k], 3) for k in ("motion_accuracy", "first_frame_psnr")})
  print(json.dumps(short), flush=True)


if __name__ == "__main__":
  app.run(main)
