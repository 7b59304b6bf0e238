"""Data: example schema, ArrayRecord shards, the grain pipeline (shuffle / repeat / sharding /
checkpointed state) and the toy dataset + codec."""

import concurrent.futures
import functools
import json
import os
import threading
import time

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pose_jax import evaluators as ev
from pose_jax.data import (
  ExampleError,
  SyntheticSource,
  decode_example,
  encode_example,
  from_config,
  make_iterator,
  read_meta,
  records,
  toy,
  toy_codec,
  write_dataset,
)
from pose_jax.data.toy_codec import ToyCodec

SRC = SyntheticSource(
  num_examples=10, latent_shape=(2, 4, 4, 3), image_shape=(5, 8), text_shape=(6, 8)
)


def keys(batch) -> list[int]:
  return [int(k.split("/")[1]) for k in batch["key"]]


def take(it, n: int) -> list[dict]:
  return [next(it) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("shards"))
  write_dataset(path, (SRC[i] for i in range(len(SRC))), shard_size=4, neg_text=SRC.neg_text)
  return path


# --- examples ---------------------------------------------------------------------------------
@pytest.mark.parametrize("compress,float_dtype", [(False, "float32"), (True, "float16")])
def test_example_round_trip(compress, float_dtype):
  ex = SRC[3]
  out = decode_example(encode_example(ex, compress=compress, float_dtype=float_dtype))
  assert out.keys() == ex.keys() and out["caption"] == "synthetic example 3"
  for k in ("latents", "cond", "image", "text"):
    assert out[k].dtype == np.float32 and out[k].shape == ex[k].shape
    np.testing.assert_allclose(out[k], ex[k], rtol=1e-3 if float_dtype == "float16" else 0)
  assert out["text_mask"].dtype == np.int32
  np.testing.assert_array_equal(out["text_mask"], ex["text_mask"])


def test_examples_decode_one_at_a_time(monkeypatch):
  """numpy's header parse (``ast.literal_eval``) is not thread-safe on CPython 3.11 (CI saw
  "AST constructor recursion depth mismatch" from grain's read threads): decodes never overlap."""
  data, lock = encode_example(SRC[1]), threading.Lock()
  active, most, real_load = [0], [0], np.load

  def slow_load(*args, **kwargs):
    with lock:
      active[0] += 1
      most[0] = max(most[0], active[0])
    time.sleep(0.01)
    with lock:
      active[0] -= 1
    return real_load(*args, **kwargs)

  monkeypatch.setattr(np, "load", slow_load)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    out = list(pool.map(lambda _: decode_example(data), range(8)))
  assert most[0] == 1 and all(o["caption"] == "synthetic example 1" for o in out)


def test_bad_examples_are_named():
  ex = SRC[0]
  with pytest.raises(ExampleError, match="synthetic/0.*missing field\\(s\\) \\['caption'\\]"):
    encode_example({k: v for k, v in ex.items() if k != "caption"})
  with pytest.raises(ExampleError, match="cond \\(2, 4, 4, 6\\) must be latents"):
    encode_example({**ex, "cond": ex["cond"][..., 1:]})
  with pytest.raises(ExampleError, match="text_mask must be integer"):
    encode_example({**ex, "text_mask": ex["text_mask"].astype(np.float32)})
  with pytest.raises(ExampleError, match="not an np.savez archive"):
    decode_example(b"garbage")


# --- shards and the pipeline ------------------------------------------------------------------
def test_shards_written_and_read_back(shard_dir):
  meta = read_meta(shard_dir)
  assert meta["num_examples"] == 10 and len(meta["shards"]) == 3  # 4 + 4 + 2
  assert meta["shapes"]["cond"] == [2, 4, 4, 7]
  src = grain.sources.ArrayRecordDataSource([os.path.join(shard_dir, s) for s in meta["shards"]])
  assert len(src) == 10
  for i in (0, 5, 9):
    got = decode_example(src[i])
    assert got["key"] == f"synthetic/{i}"
    np.testing.assert_array_equal(got["latents"], SRC[i]["latents"])
  np.testing.assert_array_equal(np.load(os.path.join(shard_dir, "neg_text.npy")), SRC.neg_text)


def test_pipeline_shuffles_by_seed_repeats_and_batches(shard_dir):
  kw = dict(process_index=0, process_count=1, with_strings=True, num_threads=1)
  a = take(make_iterator(shard_dir, 5, seed=1, **kw), 6)
  b = take(make_iterator(shard_dir, 5, seed=1, **kw), 6)
  c = take(make_iterator(shard_dir, 5, seed=2, **kw), 2)
  assert_batches_equal(a, b)
  order = [k for batch in a for k in keys(batch)]
  assert order[:10] != keys(c[0]) + keys(c[1])
  epochs = [order[i : i + 10] for i in (0, 10, 20)]
  assert all(sorted(e) == list(range(10)) for e in epochs)  # every epoch is a permutation
  assert epochs[0] != epochs[1] and epochs[0] != list(range(10))  # reshuffled each epoch
  batch = a[0]
  assert batch["latents"].shape == (5, 2, 4, 4, 3) and batch["text_mask"].shape == (5, 6)
  np.testing.assert_array_equal(batch["neg_text"], np.broadcast_to(SRC.neg_text, (5, 6, 8)))
  plain = list(make_iterator(SRC, 4, shuffle=False, repeat=False, **kw))
  assert [keys(x) for x in plain] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # remainder dropped
  no_strings = next(make_iterator(SRC, 2, process_index=0, process_count=1))
  assert set(no_strings) == {"latents", "cond", "image", "text", "text_mask", "neg_text"}


def test_sharding_by_process():
  src = SyntheticSource(
    num_examples=11, latent_shape=(1, 2, 2, 3), image_shape=(2, 4), text_shape=(3, 4)
  )
  seen = []
  for p in range(2):
    it = make_iterator(
      src, 5, seed=0, repeat=False, process_index=p, process_count=2, with_strings=True
    )
    seen.append([k for batch in it for k in keys(batch)])
  assert [len(s) for s in seen] == [5, 5]  # one global batch of 10: equal step counts
  assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == 10
  with pytest.raises(ValueError, match="fewer than batch_size=6 x 2"):
    make_iterator(src, 6, process_index=0, process_count=2)


def test_global_batches_do_not_depend_on_the_process_count():
  src = SyntheticSource(
    num_examples=13, latent_shape=(1, 2, 2, 3), image_shape=(2, 4), text_shape=(3, 4)
  )
  one = make_iterator(src, 4, seed=5, process_index=0, process_count=1, with_strings=True)
  two = [
    make_iterator(src, 2, seed=5, process_index=p, process_count=2, with_strings=True)
    for p in range(2)
  ]
  for _ in range(7):  # crosses epoch boundaries (13 examples)
    whole = next(one)
    halves = [next(it) for it in two]
    assert keys(whole) == keys(halves[0]) + keys(halves[1])
    np.testing.assert_array_equal(whole["latents"], np.concatenate([h["latents"] for h in halves]))


def test_iterator_state_round_trip(shard_dir):
  kw = dict(seed=3, process_index=0, process_count=1, with_strings=True)
  it = make_iterator(shard_dir, 3, **kw)
  take(it, 4)  # crosses an epoch boundary (10 examples, 3 per batch)
  state = it.get_state()
  expected = take(it, 3)
  fresh = make_iterator(shard_dir, 3, **kw)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 3), expected)


def test_iterator_state_through_orbax(shard_dir, tmp_path):
  kw = dict(seed=4, process_index=0, process_count=1, with_strings=True)
  it = make_iterator(shard_dir, 2, **kw)
  take(it, 3)
  options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as mngr:
    mngr.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = take(it, 2)
    fresh = make_iterator(shard_dir, 2, **kw)
    mngr.restore(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert_batches_equal(take(fresh, 2), expected)


def test_no_shards_is_named(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  write_dataset(str(tmp_path / "zero"), [])  # what prepare leaves when it wrote 0 examples
  for path in (empty, tmp_path / "zero"):
    for call in (make_iterator, lambda *a, **k: records.open_source(a[0])):
      with pytest.raises(FileNotFoundError, match=f"{path} holds no ArrayRecord shards"):
        call(str(path), 2, process_index=0, process_count=1)


# --- from_config ------------------------------------------------------------------------------
def data_config(**data) -> ml_collections.ConfigDict:
  base = dict(kind="toy", size=16, frames=5, path="", eval_path="", height=0, width=0)
  return ml_collections.ConfigDict(
    {"seed": 0, "train": {"batch_size": 2}, "data": {**base, **data}}
  )


@pytest.fixture
def small_toy(monkeypatch):
  """from_config's toy builds with one clip per photo and move (the real build, 4x smaller)."""
  monkeypatch.setattr(toy, "build_dataset", functools.partial(toy.build_dataset, clips_per_move=1))


def test_toy_data_follows_the_config(tmp_path, capsys, small_toy):
  workdir, root = str(tmp_path), str(tmp_path / "data")
  it, eval_batch = from_config(data_config(), workdir)  # the smallest toy clips
  assert next(it)["latents"].shape == (2, 5, 8, 8, 12) and eval_batch["latents"].shape[2] == 8
  it.close()  # its threads must not read the shards being replaced
  assert (
    capsys.readouterr().out == f"data: building toy clips in {root} (size=16, frames=5, seed=0)\n"
  )
  it, eval_batch = from_config(data_config(size=32), workdir)
  assert next(it)["latents"].shape == (2, 5, 16, 16, 12)
  n_eval = len(toy.HOLDOUT) * len(toy.MOVES)  # toy: every held-out clip, with its strings
  assert eval_batch["latents"].shape == (n_eval, 5, 16, 16, 12)
  assert [str(k).split("/")[1] for k in eval_batch["key"][:2]] == list(toy.MOVES)[:2]
  assert str(eval_batch["caption"][0]) == toy.caption(toy.HOLDOUT[0], "pan_left")
  it.close()
  assert capsys.readouterr().out == (
    f"data: {root} was built with size=16 frames=5; config asks size=32 frames=5: rebuilding\n"
  )
  assert read_meta(os.path.join(root, "train"))["size"] == 32
  mtime = os.path.getmtime(os.path.join(root, "train", "meta.json"))
  it, _ = from_config(data_config(size=32), workdir)  # same config: kept
  assert next(it)["latents"].shape == (2, 5, 16, 16, 12) and capsys.readouterr().out == ""
  assert os.path.getmtime(os.path.join(root, "train", "meta.json")) == mtime
  assert sorted(os.listdir(tmp_path)) == ["data"]  # no build dirs left beside it


def test_interrupted_toy_build_is_not_taken_for_data(tmp_path, monkeypatch, capsys, small_toy):
  small = toy.build_dataset

  def interrupted(out_dir, codec, **kw):  # train written (meta and all), then killed before eval
    write_dataset(os.path.join(out_dir, "train"), (SRC[i] for i in range(4)), **kw)
    raise KeyboardInterrupt

  monkeypatch.setattr(toy, "build_dataset", interrupted)
  with pytest.raises(KeyboardInterrupt):
    from_config(data_config(), str(tmp_path))
  assert os.listdir(tmp_path) == []  # neither data/ nor the half-built one
  tmp = tmp_path / "data.building-x" / "train"  # one left by a killed process (no cleanup)
  write_dataset(str(tmp), (SRC[i] for i in range(4)), size=16, frames=5, seed=0)
  monkeypatch.setattr(toy, "build_dataset", small)
  write_dataset(str(tmp_path / "data" / "train"), (SRC[i] for i in range(4)), size=16, frames=5)
  capsys.readouterr()
  it, _ = from_config(data_config(), str(tmp_path))  # meta lacks seed: not what was asked
  assert "was built with size=16 frames=5 seed=None codec_version=None" in capsys.readouterr().out
  assert next(it)["latents"].shape == (2, 5, 8, 8, 12)
  assert sorted(os.listdir(tmp_path)) == ["data"]  # the stale build removed


def test_records_must_match_the_config(shard_dir, tmp_path):
  path = str(tmp_path / "shards")
  write_dataset(path, (SRC[i] for i in range(4)), frames=9, height=32, width=48)
  ok = data_config(kind="records", path=path, frames=9, height=32)  # width 0: not checked
  assert next(from_config(ok, str(tmp_path))[0])["latents"].shape[0] == 2
  with pytest.raises(ValueError, match=f"config.data.frames=13 but the shards at {path} hold 9"):
    from_config(data_config(kind="records", path=path, frames=13), str(tmp_path))
  with pytest.raises(ValueError, match="config.data.width=64 but .* hold frames 48 px wide"):
    from_config(data_config(kind="records", path=path, frames=9, width=64), str(tmp_path))
  bad_eval = data_config(kind="records", path=shard_dir, eval_path=path, frames=13)
  with pytest.raises(ValueError, match=f"config.data.frames=13 but the shards at {path}"):
    from_config(bad_eval, str(tmp_path))  # shard_dir's meta has no frames: not checked


# --- toy codec (tests/data/test_toy_codec.py) -------------------------------------------------
def test_toy_data_of_another_codec_is_rebuilt(tmp_path, capsys, small_toy):
  workdir, root = str(tmp_path), str(tmp_path / "data")
  from_config(data_config(), workdir)[0].close()
  meta_path = os.path.join(root, "train", "meta.json")
  with open(meta_path) as f:
    meta = json.load(f)
  assert meta["codec_version"] == toy_codec.VERSION and meta["spatial_factor"] == 2
  with open(meta_path, "w") as f:  # what codec v1 (keyframes + cross-fade) wrote
    json.dump({**meta, "codec_version": 1, "spatial_factor": 4}, f)
  capsys.readouterr()
  it, _ = from_config(data_config(), workdir)
  assert "codec_version=1 spatial_factor=4" in capsys.readouterr().out
  assert next(it)["latents"].shape == (2, 5, 8, 8, 12)
  it.close()
  it, _ = from_config(data_config(codec_factor=4, codec_condition="every"), workdir)
  assert "spatial_factor=2 condition_frames=first" in capsys.readouterr().out
  batch = next(it)
  assert batch["latents"].shape == (2, 5, 4, 4, 48)
  np.testing.assert_array_equal(batch["cond"][:, 4, ..., 4:], batch["latents"][:, 0])
  assert read_meta(os.path.join(root, "train"))["codec_version"] == toy_codec.VERSION


# --- toy dataset --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("toy"))
  metas = toy.build_dataset(path, size=32, frames=9, holdout=("coffee", "clock"), clips_per_move=1)
  return path, metas


def toy_examples(path: str) -> dict[str, dict]:
  src = grain.sources.ArrayRecordDataSource(
    [os.path.join(path, s) for s in read_meta(path)["shards"]]
  )
  return {ex["key"]: ex for ex in (decode_example(src[i]) for i in range(len(src)))}


def test_toy_dataset_splits_and_captions(toy_dir):
  path, metas = toy_dir
  train, held = toy_examples(os.path.join(path, "train")), toy_examples(os.path.join(path, "eval"))
  n_moves = len(toy.MOVES)
  assert len(train) == (len(toy.PHOTOS) - 2) * n_moves and len(held) == 2 * n_moves
  assert {k.split("/")[0] for k in held} == {"coffee", "clock"}
  assert not {k.split("/")[0] for k in train} & {"coffee", "clock"}
  for key, ex in {**train, **held}.items():
    photo, move, _ = key.split("/")
    assert ex["caption"] == f"a photo of {toy.PHOTOS[photo]}, {toy.MOVES[move]}"
  assert metas["train"]["in_channels"] == 2 * 12 + 4 and metas["train"]["out_channels"] == 12
  assert metas["train"]["shapes"]["latents"] == [9, 16, 16, 12]
  # Conditions differ per caption and per photo (random encoders still separate them).
  a, b, c = train["astronaut/pan_left/0"], train["astronaut/zoom_in/0"], train["rocket/pan_left/0"]
  assert np.abs(a["text"] - b["text"]).max() > 1e-3 and np.abs(a["image"] - c["image"]).max() > 1e-3
  np.testing.assert_array_equal(a["cond"][0, ..., 4:], a["latents"][0])
  assert np.all(a["cond"][1:] == 0) and np.all(a["cond"][0, ..., :4] == 1)


def test_toy_motion_is_real(toy_dir):
  """Every frame is in the latents; decoded, each clip moves as its caption says."""
  train = toy_examples(os.path.join(toy_dir[0], "train"))
  codec, v = ToyCodec(), toy.pan_speed(32)
  video = lambda move: codec.decode(train[f"astronaut/{move}/0"]["latents"][None])[0]
  pan = video("pan_left")
  np.testing.assert_array_equal(pan[8][:, 8 * v :], pan[0][:, : -8 * v])  # content slides right
  np.testing.assert_array_equal(pan[1][:, v:], pan[0][:, :-v])  # frame 1 too: no cross-fade
  pan = video("pan_up")
  np.testing.assert_array_equal(pan[8][8 * v :], pan[0][: -8 * v])  # content slides down
  assert np.array_equal(video("static")[0], video("static")[8])
  moves = [k.split("/")[1] for k in sorted(train) if k.startswith("astronaut/")]
  videos = np.stack(
    [
      codec.decode(train[k]["latents"][None])[0]
      for k in sorted(train)
      if k.startswith("astronaut/")
    ]
  )
  assert list(ev.camera_move((videos + 1) / 2).move) == moves


def test_toy_pipeline_batches(toy_dir):
  path = os.path.join(toy_dir[0], "train")
  batch = next(make_iterator(path, 4, process_index=0, process_count=1))
  assert batch["latents"].shape == (4, 9, 16, 16, 12) and batch["cond"].shape == (4, 9, 16, 16, 16)
  assert batch["text"].shape == batch["neg_text"].shape == (4, toy.TEXT_LENGTH, 32)
  assert batch["image"].shape == (4, 17, 32)
  assert batch["neg_text"][0, 1:].max() == 0 and np.abs(batch["neg_text"][0, 0]).max() > 0


def test_synthetic_source_defaults_are_the_toy_runs_shapes():
  """The end-to-end tests feed SyntheticSource() to the toy config: its shapes must be the toy
  data's (configs/toy_i2v.py through the toy codec)."""
  from pose_jax.data.toy_codec import ToyCodec
  from tests.helpers.tiny import load_config

  config, codec = load_config("toy_i2v"), ToyCodec()
  side = config.data.size // codec.spatial_factor
  assert SyntheticSource().latent_shape == (config.data.frames, side, side, codec.z_dim)
  assert config.model.in_channels == 2 * codec.z_dim + 4


def test_toy_pan_speed_is_a_knob():
  photo, rng = toy.load_photo("astronaut"), lambda: np.random.default_rng(0)
  fast = toy.camera_clip(photo, "pan_left", 32, 5, rng(), speed=4).astype(int)
  np.testing.assert_array_equal(fast[1][:, 4:], fast[0][:, :-4])  # 4 px per frame, not 2
  default = toy.camera_clip(photo, "pan_left", 32, 5, rng()).astype(int)
  np.testing.assert_array_equal(default[1][:, 2:], default[0][:, :-2])
  for bad in (3, -2):
    with pytest.raises(ValueError, match="pan speed"):
      toy.camera_clip(photo, "pan_left", 32, 5, rng(), speed=bad)
  clips = toy.make_clips(["astronaut"], 32, 5, 1, 0, pan_speed=4)
  np.testing.assert_array_equal(clips[0][2][2][:, 8:], clips[0][2][0][:, :-8])
