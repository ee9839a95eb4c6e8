"""What the config files in configs/ share, importable from any working directory.

The config files themselves (configs/*.py, configs/teachers/*.py) are the
recipes of their experiments, loaded by path (`--config=configs/flowers_r50.py`
or any absolute path); they import what they share from here, as
`from big_distill.configs import common`.
"""
