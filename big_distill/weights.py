"""The weights of a run's models: teachers, the student's start, a model to evaluate.

Read by each model's module (`load`), as numpy, checked against the model;
teachers are then frozen, cast to the compute dtype once and sharded.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from big_distill import errors
from big_distill import parallel
from big_distill.checks import config_errors, resolve_init
from big_distill.model_set import Models, init_variables, model_module, variable_shapes


def load_weights(config: mlc.ConfigDict, name: str, model, path: str, *, template=None,
                 where: str | None = None, **kwargs) -> Any:
  """`config.<name>_name`'s load() of `path` into `model`'s shapes, as numpy.

  `template`: the parameters load() fills in (default: zeros of the model's
  shapes). The model module reports a file that does not fit the model with a
  ValueError naming the arrays; that is the config's mistake (its depth,
  width or num_classes, or the path), reported once, prefixed by `where`
  (default: the config field of the path).
  """
  module = model_module(config[f"{name}_name"])
  if template is None:
    shapes = variable_shapes(model, config[f"{name}_res"])
    if "batch_stats" not in shapes:
      shapes = shapes["params"]  # A bare params tree, as bit.load takes.
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  with config_errors(where if where is not None else f"config.{name}_init={path}: "):
    return module.load(template, resolve_init(path), **kwargs)


def load_trained(config: mlc.ConfigDict, name: str, model, path: str,
                 where: str | None = None) -> Any:
  """Trained weights (a teacher, or a model to evaluate): the head must fit.

  Contract: a model module whose load() takes `head_mismatch` raises for a
  head of another class count with head_mismatch="error". Older ones replace
  such a head by zeros (as fine-tuning from BiT-M wants), so an all-zero
  kernel is read as that replacement: no trained model has one.
  """
  module = model_module(config[f"{name}_name"])
  takes = inspect.signature(module.load).parameters
  if "head_mismatch" in takes:
    # stem_pool_pad: bit.load warns when a big_vision file meets a "zeros" model.
    extra = ({"stem_pool_pad": model.stem_pool_pad}
             if "stem_pool_pad" in takes and hasattr(model, "stem_pool_pad") else {})
    return load_weights(config, name, model, path, where=where, head_mismatch="error", **extra)
  host = load_weights(config, name, model, path, where=where)
  if not np.any(host.get("params", host)["head"]["kernel"]):
    if name == "student":
      what, fix = "The model", ("Evaluate it with the config of the data set it was "
                                "trained on.")
    else:
      what, fix = f"Teacher {name!r}", ("A teacher must be fine-tuned on this data set "
                                        "first (configs/teachers/).")
    raise errors.ConfigError(
        f"{what} ({path}) has a head with a different number of classes than "
        f"config.num_classes={config.num_classes}. {fix}")
  return host


def frozen_params(config: mlc.ConfigDict, t: str, host: Any) -> Any:
  """Teacher `t`'s float32 weights as its frozen model (`_frozen`) takes them."""
  module = model_module(config[f"{t}_name"])
  return module.freeze_params(host) if hasattr(module, "freeze_params") else host


def put_teacher(config: mlc.ConfigDict, mesh, host: Any) -> Any:
  """Sharded over fsdp where large, and cast once to the compute dtype, not every step."""
  sharding = parallel.param_shardings(mesh, host, config.fsdp_min_size)
  return jax.tree.map(lambda x, s: jax.device_put(x.astype(config.compute_dtype), s),
                      host, sharding)


def load_teachers(config: mlc.ConfigDict, models: Models, mesh) -> dict[str, Any]:
  """The teachers' parameters: loaded, checked against their configs, sharded, cast."""
  return {t: put_teacher(config, mesh, frozen_params(
      config, t, load_trained(config, t, m, config[f"{t}_init"])))
          for t, m in models.teachers.items()}


def load_student_init(config: mlc.ConfigDict, models: Models) -> Any | None:
  """`config.student_init` as numpy parameters of the student (None: from scratch)."""
  if not config.student_init:
    return None
  return load_weights(config, "student", models.student, config.student_init)


def random_params(model, res: int, key, dtype=jnp.float32) -> Any:
  """Random parameters with a random head, in `dtype` (jit it).

  BiT's head starts at zero, which would make every output uniform: a random
  teacher must have a head, so that its targets (and FLOPs) are realistic.
  """
  variables = init_variables(model, res, key)
  params = variables["params"]
  kernel = params["head"]["kernel"]
  head = jax.random.normal(jax.random.fold_in(key, 1), kernel.shape) / math.sqrt(kernel.shape[0])
  params = {**params, "head": {**params["head"], "kernel": head}}
  if "batch_stats" in variables:  # The weights of a BatchNorm model: see as_variables.
    params = {"params": params, "batch_stats": variables["batch_stats"]}
  return jax.tree.map(lambda x: x.astype(dtype), params)
