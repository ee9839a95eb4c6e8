"""What a run reads: its training batches, and its evaluators."""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import ml_collections as mlc

from big_distill import evaluators
from big_distill import parallel
from big_distill import precompute
from big_distill import setup
from big_distill.data import device as device_data
from big_distill.data import input as input_lib
from big_distill.model_set import Models


def prepare_train_data(config: mlc.ConfigDict, mesh) -> Any:
  """What the training input holds in memory, made (and checked) before training.

  "decoded": the decoded set (host); "device": it on every device; else None
  (encoded caches and streams read their files when iterated). Called before
  anything is written to the workdir, so a set that does not fit, or a random
  op in `input.pp`, is refused first.
  """
  mode = input_lib.cache_mode(config)
  if mode not in ("decoded", "device"):
    return None
  decoded = input_lib.decode_training_set(config)
  return device_data.put(decoded, config, mesh) if mode == "device" else decoded


def train_batches(config: mlc.ConfigDict, mesh, start_step: int, data: Any = None,
                  tables: Any = None) -> Iterator[Any]:
  """What `train_step` takes third, step after step, from `start_step` on.

  Host pipelines: global batches, `config.input.prefetch` ahead, with the
  fixed teachers' precomputed outputs (`tables`) looked up by example id. The
  device cache: the device-resident data set, the same every step (the step
  draws its batch from it by (seed, step)). `data`: from `prepare_train_data`.
  """
  if input_lib.cache_mode(config) == "device":
    return itertools.repeat(data if data is not None else prepare_train_data(config, mesh))
  batches = input_lib.make_train_dataset(config, start_step=start_step,
                                         decoded=data).as_numpy_iterator()
  if tables is not None:
    batches = precompute.with_targets(batches, tables)
  return input_lib.to_global(batches, parallel.batch_sharding(mesh), config.input.prefetch)


def make_evaluators(config: mlc.ConfigDict, models: Models, mesh) -> list[evaluators.Evaluator]:
  """One evaluator per entry of `config.evals`, on the models' predict function.

  Evaluators of one type share their jitted step (one compile per batch shape).
  """
  predict, steps = setup.make_predict(models), {}
  return [evaluators.Evaluator(name, config, predict=predict, teachers=config.teachers,
                             mesh=mesh, batch_sharding=parallel.batch_sharding(mesh),
                             steps=steps)
          for name in config.evals]
