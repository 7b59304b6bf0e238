"""Sampling: latent samplers (one-step student, teacher Euler/UniPC with CFG), the image-to-video
pipeline, checkpoint loading and video files; ``python -m pose_jax.sampling`` is the CLI."""
