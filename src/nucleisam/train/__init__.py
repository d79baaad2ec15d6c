"""Training: loop, losses, cross-validation runner, checkpoints and resume."""
