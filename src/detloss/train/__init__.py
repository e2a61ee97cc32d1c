"""Training harness: config, trainer, checkpoints, logs, plots."""
