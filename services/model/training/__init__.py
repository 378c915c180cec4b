"""Training: ``moodreel train`` (the loop, its config, presets, losses, data sources), evaluation,
the fusion stage, calibration fitting and SageMaker training jobs."""
