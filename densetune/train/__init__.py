"""Training: config, loop, checkpoints, distributed."""
