"""The plan of a run: its durations in steps, and its device mesh."""

from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections as mlc

from big_distill import config_lib
from big_distill import errors
from big_distill import parallel
from big_distill.checks import config_errors


@dataclasses.dataclass(frozen=True)
class Durations:
  """Every period of a run, in steps."""
  total: int
  warmup: int
  log: int
  ckpt: int
  evals: dict[str, int]
  steps_per_epoch: float


def durations(config: mlc.ConfigDict) -> Durations:
  """The config's durations (given in steps, epochs or examples) in steps."""
  # pylint: disable=g-import-not-at-top  (TFDS: the data set's size)
  from big_distill import evaluators
  from big_distill.data import datasets
  # pylint: enable=g-import-not-at-top
  batch_size = config.input.batch_size
  n_train = datasets.num_examples(config.input.data)
  dur = functools.partial(config_lib.steps, num_examples=n_train, batch_size=batch_size)
  total = dur("total", config)
  if not total:
    raise errors.ConfigError(
        "Set the training length: config.total_steps, total_epochs or total_examples.")
  dur = functools.partial(dur, total_steps=total)
  return Durations(
      total=total,
      warmup=dur("warmup", config.schedule, default=0),
      log=dur("log_training", config, default=max(total // 100, 1)),
      ckpt=dur("ckpt", config, default=total),
      evals={name: evaluators.period(config, name, num_examples=n_train, batch_size=batch_size,
                                   total_steps=total) for name in config.evals},
      steps_per_epoch=n_train / batch_size)


def make_mesh(config: mlc.ConfigDict, batch_size: int | None = None) -> jax.sharding.Mesh:
  """The mesh of `config.mesh`, checked against the training and eval batch sizes."""
  with config_errors():
    mesh = parallel.make_mesh(config.mesh)
    parallel.check_batch_size(batch_size or config.input.batch_size, mesh)
    for name, ec in config.evals.items():
      parallel.check_batch_size(ec.batch_size or config.input.batch_size, mesh,
                                f"config.evals.{name}.batch_size")
  return mesh
