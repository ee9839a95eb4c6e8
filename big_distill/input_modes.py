"""The input choices of a config, checked without TensorFlow.

`config.distill.views` (which images the models see) and `config.input.cache`
(where the training set is held) decide how the train step is built, so the
step, the set-up and the benchmark read them here; the input pipeline itself
(`big_distill.data.input`, TensorFlow) re-exports them.
"""

from __future__ import annotations

import ml_collections as mlc

from big_distill import errors

VIEWS = ("consistent", "independent", "fixed")
# config.input.cache: "none" streams from files; "encoded" keeps the encoded
# examples in host memory (random access: one global stream for any process
# count); "decoded" keeps them decoded by `input.pp` (uint8 pixels: no JPEG
# decoding per step); "device" keeps the decoded set on every device and makes
# the batches inside the train step (data/device.py).
CACHE_MODES = ("none", "encoded", "decoded", "device")


def check_views(views: str) -> None:
  """`config.distill.views` is one of VIEWS (the one place that checks it)."""
  if views not in VIEWS:
    raise errors.ConfigError(f"config.distill.views={views!r}: must be one of {VIEWS}.")


def model_names(config: mlc.ConfigDict) -> tuple[str, ...]:
  """'student' and the teachers, the keys of batch['image']."""
  return ("student", *config.teachers)


def cache_mode(config: mlc.ConfigDict) -> str:
  """`config.input.cache`, checked."""
  mode = config.input.cache
  if mode not in CACHE_MODES:
    raise errors.ConfigError(f"config.input.cache={mode!r}: must be one of {CACHE_MODES}.")
  return mode
