"""Ahead-of-time compiles for TPU topologies from a CPU host: ``python -m pose_jax.aot``."""
