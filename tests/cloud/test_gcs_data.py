"""Shard datasets in the emulator's bucket (``pose_jax.data.bucket``): uploaded, fetched into a
checked local cache, read by the same pipeline as local shards; damaged copies are fetched
again, a damaged object is named, an unfinished upload is refused."""

import os

import numpy as np
import pytest
from etils import epath

from pose_jax.data import bucket, records, source
from tests.helpers import gcs
from tests.helpers.tiny import load_config

REMOTE = f"gs://{gcs.BUCKET}/shards"


@pytest.fixture(scope="module")
def dataset(emulator, tmp_path_factory):
  """``(local dataset dir, its upload)``: 10 synthetic examples in 3 shards."""
  local = str(tmp_path_factory.mktemp("shards"))
  src = records.SyntheticSource(num_examples=10)
  records.write_dataset(local, (src[i] for i in range(10)), shard_size=4, neg_text=src.neg_text)
  names = bucket.upload(local, REMOTE)
  assert names[-1] == "meta.json" and len(names) == 5  # 3 shards, neg_text, meta
  return local, REMOTE


def _batches(path, n=3):
  it = records.make_iterator(path, 4, seed=3)
  out = [next(it) for _ in range(n)]
  it.close()
  return out


def test_fetched_shards_read_as_the_local_ones(dataset, tmp_path):
  local, remote = dataset
  fetched = bucket.fetch(remote, str(tmp_path), log=None)
  assert fetched == os.path.join(str(tmp_path), "gs", gcs.BUCKET, "shards")
  for a, b in zip(_batches(local), _batches(fetched)):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_a_damaged_cached_shard_is_fetched_again(dataset, tmp_path):
  _, remote = dataset
  lines = []
  fetched = bucket.fetch(remote, str(tmp_path), log=lines.append)
  assert bucket.fetch(remote, str(tmp_path), log=lines.append) == fetched
  shard = os.path.join(fetched, "shard-00001.array_record")
  with open(shard, "r+b") as f:  # same size, one byte changed: only the SHA-256 can tell
    f.seek(100)
    byte = f.read(1)
    f.seek(100)
    f.write(bytes([byte[0] ^ 0xFF]))
  os.truncate(os.path.join(fetched, "shard-00002.array_record"), 10)
  bucket.fetch(remote, str(tmp_path), log=lines.append)
  assert [x.split("(")[1] for x in lines] == [
    "4 of 4 files fetched, rest cached)",
    "0 of 4 files fetched, rest cached)",
    "2 of 4 files fetched, rest cached)",
  ]
  meta = records.read_meta(fetched)
  for name in meta["shards"]:
    assert bucket.sha256(os.path.join(fetched, name)) == meta["sha256"][name]


def test_a_damaged_object_in_the_bucket_is_named(dataset, tmp_path):
  local, _ = dataset
  remote = f"gs://{gcs.BUCKET}/damaged"
  bucket.upload(local, remote)
  obj = epath.Path(remote) / "shard-00000.array_record"
  data = bytearray(obj.read_bytes())
  data[50] ^= 0xFF
  obj.write_bytes(bytes(data))
  with pytest.raises(bucket.CorruptShard, match="damaged/shard-00000.array_record: fetched"):
    bucket.fetch(remote, str(tmp_path), log=None)
  cached = bucket.cache_dir_for(remote, str(tmp_path))
  assert not [n for n in os.listdir(cached) if "shard-00000" in n]  # no part file left behind


def test_an_unfinished_upload_is_refused(emulator, tmp_path):
  remote = f"gs://{gcs.BUCKET}/unfinished"
  (epath.Path(remote) / "shard-00000.array_record").write_bytes(b"x" * 10)
  with pytest.raises(FileNotFoundError, match="unfinished: no meta.json"):
    bucket.fetch(remote, str(tmp_path), log=None)


def test_a_records_config_reads_gs_shards(dataset, tmp_path):
  """``config.data.path=gs://...``: the run's data come from the cache, as from local shards."""
  local, remote = dataset
  config = load_config("toy_i2v")
  with config.unlocked():
    config.data.kind = "records"
    config.data.path, config.data.eval_path = remote, ""
    config.data.cache_dir = str(tmp_path / "cache")
    config.data.frames = 0
    config.train.batch_size = 4
  iterator, _ = source.from_config(config, str(tmp_path / "run"))
  got = next(iterator)
  want = next(records.make_iterator(local, 4, seed=config.seed))
  np.testing.assert_array_equal(got["latents"], want["latents"])
  assert os.path.isdir(bucket.cache_dir_for(remote, config.data.cache_dir))


def test_prepare_writes_its_shards_to_the_bucket(emulator, tmp_path):
  """``prepare --out=gs://...``: staged in the data cache, uploaded with ``meta.json`` last; a
  run then fetches nothing (the staging copy is the cache)."""
  import json
  import subprocess
  import sys

  from tests.data.test_prepare import FRAMES, HEIGHT, WIDTH, make_frames, write_video
  from tests.helpers import ROOT
  from tests.helpers.tiny import tiny_pipeline

  write_video(str(tmp_path / "a.mp4"), make_frames(10))
  caption = {"video": "a.mp4", "caption": "a cat"}
  (tmp_path / "captions.jsonl").write_text(json.dumps(caption) + "\n")
  tiny_pipeline().save_pretrained(tmp_path / "pipe")
  remote = f"gs://{gcs.BUCKET}/prepared"
  cmd = [sys.executable, "-m", "pose_jax.data.prepare", f"--videos={tmp_path}/*.mp4"]
  cmd += [f"--captions={tmp_path / 'captions.jsonl'}", f"--out={remote}"]
  cmd += [f"--pipeline={tmp_path / 'pipe'}", f"--frames={FRAMES}", f"--height={HEIGHT}"]
  cmd += [f"--width={WIDTH}", "--fps=8"]
  env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))  # the default cache: under $TMPDIR
  os.makedirs(env["TMPDIR"])
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"uploaded 4 files to {remote}" in proc.stdout, proc.stdout
  objects = emulator.objects("prepared/")
  assert {"prepared/meta.json", "prepared/shard-00000.array_record"} <= set(objects), objects
  cache = os.path.join(env["TMPDIR"], "pose_jax_data")
  lines = []
  assert bucket.fetch(remote, cache, log=lines.append) == bucket.cache_dir_for(remote, cache)
  assert "(0 of 2 files fetched" in lines[0], lines
