"""The convert tests' shared inputs: a tiny diffusers Wan transformer folder and its import."""

import pytest

from pose_jax.convert import importer
from pose_jax.models.wan import preset
from tests.helpers.torch_refs import torch_wan


@pytest.fixture(scope="module")
def src(tmp_path_factory):
  """A tiny random ``WanTransformer3DModel`` written with ``save_pretrained``."""
  path = tmp_path_factory.mktemp("diffusers")
  torch_wan(preset("tiny"), seed=7).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def ckpt(src, tmp_path_factory):
  """``src`` imported: an orbax model checkpoint."""
  path = tmp_path_factory.mktemp("ckpt") / "c"
  importer.import_checkpoint(str(src), path, progress=False)
  return path


@pytest.fixture
def failing_read(monkeypatch):
  """``importer.read_tensor`` failing on its 40th call (an import dying midway); the calls."""
  from pose_jax.convert.errors import CheckpointError

  read, calls = importer.read_tensor, []

  def flaky(info):
    calls.append(info)
    if len(calls) == 40:
      raise CheckpointError(f"{info.file}: disk on fire")
    return read(info)

  monkeypatch.setattr(importer, "read_tensor", flaky)
  return calls


@pytest.fixture
def failing_export(monkeypatch):
  """Call it to make ``export.torch_arrays`` fail after 30 arrays (an export dying midway)."""
  from pose_jax.convert import export
  from pose_jax.convert.errors import CheckpointError

  arrays = export.torch_arrays

  def failing(*a):
    yield from list(arrays(*a))[:30]
    raise CheckpointError("read failed")

  return lambda: monkeypatch.setattr(export, "torch_arrays", failing)
