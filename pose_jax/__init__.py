"""pose_jax: POSE one-step video distillation for Wan2.1 in JAX/Flax (nnx).

Conventions used across the package:
  * Videos and latents are channels-last: ``[B, T, H, W, C]``.
  * Parameters carry *logical* axis names (see :mod:`pose_jax.sharding`); they are mapped to the
    mesh axes ``('data', 'fsdp', 'context', 'tensor')`` by one rules table.
  * Models are built abstract first and materialised straight into their sharding
    (:func:`pose_jax.sharding.create_state`); no parameter is sharded eagerly
    (:func:`pose_jax.models.layers.param`), so a model can also be built without any mesh
    (tests, conversion) whatever flax's ``flax_always_shard_variable`` says.
  * Importing the package changes no global setting.
"""

__version__ = "0.1.0"
