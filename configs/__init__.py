"""Experiment configs: `--config=configs/<name>.py[:args]` (or any path to them).

What they share is in the package: big_distill/configs/.
"""
