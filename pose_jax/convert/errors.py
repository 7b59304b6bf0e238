"""The one error every checkpoint reader, converter and loader raises."""


class CheckpointError(ValueError):
  """A checkpoint on disk is missing, corrupt, or does not match the model."""
