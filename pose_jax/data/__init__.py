"""Training data: the example schema, ArrayRecord shards + the grain pipeline, toy clips, and
``from_config(config, workdir) -> (iterator, eval_batch)``: the data a config names.

``pose_jax.data.toy`` (toy clips from scikit-image photos and the toy pixel codec) is imported
on its own: it needs scikit-image and the encoders.
"""

from pose_jax.data.example import ExampleError, decode_example, encode_example, validate
from pose_jax.data.records import (
  ShardWriter,
  SyntheticSource,
  make_dataset,
  make_iterator,
  open_source,
  read_meta,
  write_dataset,
)
from pose_jax.data.source import DataMismatch, from_config

__all__ = [
  "DataMismatch",
  "ExampleError",
  "ShardWriter",
  "SyntheticSource",
  "decode_example",
  "encode_example",
  "from_config",
  "make_dataset",
  "make_iterator",
  "open_source",
  "read_meta",
  "validate",
  "write_dataset",
]
