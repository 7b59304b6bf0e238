"""The one strict matcher: shape rules of the layout transforms, problems and their message."""

import jax
import numpy as np
import pytest

from pose_jax.convert import encoders, strict, wan_diffusers, wan_vae
from pose_jax.convert.errors import CheckpointError

SHAPES = [(), (5,), (4, 1, 1), (4, 1, 1, 1), (1, 1, 5), (1, 6, 5), (2, 6, 5), (2, 3), (6, 2, 1, 1)]
SHAPES += [(4, 3, 2, 2), (4, 3, 1, 2, 2), (2, 3, 1, 1, 1), (4, 3, 3, 3, 3)]


def transforms() -> dict[str, strict.Transform]:
  found = {}
  for module in (strict, wan_diffusers, encoders, wan_vae):
    for name, value in vars(module).items():
      if isinstance(value, strict.Transform):
        found[f"{module.__name__}.{name}"] = value
  return found


def test_every_transform_produces_the_shape_it_promises():
  found = transforms()
  assert len(found) >= 10, sorted(found)
  for name, t in found.items():
    applies = 0
    for shape in SHAPES:
      want = t.shape(shape)
      if want is not None:
        src = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
        assert t(src).shape == want, (name, shape)
        applies += 1
    assert applies, name


SPECS = {
  ("proj", "kernel"): jax.ShapeDtypeStruct((2, 3), np.float32),
  ("blocks", "w"): jax.ShapeDtypeStruct((2, 4), np.float32),
}


def key_map(key: str) -> strict.Target | None:
  if key == "proj.weight":
    return strict.Target(("proj", "kernel"), None, strict.LINEAR)
  if key.startswith("blocks.") and key.endswith(".w"):
    return strict.Target(("blocks", "w"), int(key.split(".")[1]))
  if key == "loose.w":  # a stacked parameter without a layer
    return strict.Target(("blocks", "w"), None)
  return None


def test_fill_places_every_array():
  rng = np.random.default_rng(0)
  items = {"proj.weight": rng.standard_normal((3, 2)), "blocks.1.w": np.arange(4.0)}
  items["blocks.0.w"] = -np.arange(4.0)
  out = strict.fill(items.items(), SPECS, key_map, stacked="blocks", dtype=np.float16)
  np.testing.assert_array_equal(out["proj", "kernel"], items["proj.weight"].T.astype(np.float16))
  np.testing.assert_array_equal(out["blocks", "w"], [-np.arange(4.0), np.arange(4.0)])
  assert out["blocks", "w"].dtype == np.float16


def test_check_lists_every_problem_in_one_message():
  sources = [
    ("proj.weight", np.zeros((3, 3))),
    ("blocks.0.w", np.zeros(4)),
    ("blocks.0.w", np.zeros(4)),
    ("blocks.2.w", np.zeros(4)),
    ("loose.w", np.zeros(4)),
    ("other.bias", np.zeros(1)),
  ]
  seen = []
  problems = strict.check(
    sources, SPECS, key_map, stacked="blocks", on_match=lambda k, t, s: seen.append((k, t.layer))
  )
  assert seen == [("blocks.0.w", 0)]
  assert problems.message() == (
    "checkpoint does not match the model; "
    "missing (2): ['proj/kernel', 'blocks/w layers [1]']; "
    "unexpected (1): ['other.bias']; "
    "wrong shape (3): ['proj.weight: source (3, 3) -> proj/kernel expects (2, 3)', "
    "'blocks.2.w: layer 2, but the model has 2 layers', "
    "'loose.w: source (4,) -> blocks/w expects (4,)']; "
    "duplicate (1): ['blocks.0.w and blocks.0.w']"
  )
  with pytest.raises(CheckpointError, match=r"^ckpt: checkpoint does not match the model; miss"):
    problems.raise_if_any("ckpt")
  with pytest.raises(CheckpointError, match="unexpected"):
    strict.fill(iter(sources), SPECS, key_map, stacked="blocks")
  ok = [("proj.weight", np.zeros((3, 2))), ("blocks.0.w", np.zeros(4)), ("blocks.1.w", np.zeros(4))]
  assert not strict.check(ok, SPECS, key_map, stacked="blocks")
  many = strict.check([(f"x{i}", np.zeros(1)) for i in range(25)], {}, key_map)
  assert many.message().endswith("'x19', ... 5 more]")
