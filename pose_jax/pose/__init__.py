"""The POSE method: time sampling, losses, discriminator head and the phase steps."""
