"""Model: network, checkpoints, training, evaluation."""
