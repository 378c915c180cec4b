"""The model itself: its config, the network, the table of its parts, checkpoints, calibration and
the one forward path that evaluation and serving share."""
