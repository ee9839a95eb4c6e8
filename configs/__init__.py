"""Experiment configs: `--config=configs/<name>.py[:args]`, run from the repository root."""
