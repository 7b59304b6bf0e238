"""Training: the POSE recipe (train.run), its loop, state, fused steps, optimizer,
checkpoints and evaluation during training."""
