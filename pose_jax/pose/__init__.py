"""The POSE method: its config (PoseConfig), time sampling, losses, the DiT as a velocity field,
the discriminator head, the model set, and one record per phase (phases.PHASES)."""
