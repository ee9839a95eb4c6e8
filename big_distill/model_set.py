"""The models of a run, built from its config: the student and the teachers.

`config.student_name` / `config.<teacher>_name` name a module of
`big_distill/models/` (the model contract: its docstring); `config.student` /
`config.<teacher>` are its Model's keyword arguments. Shapes come from
`jax.eval_shape` of `model.init`: nothing is allocated or compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc

from big_distill import errors


@dataclasses.dataclass(frozen=True)
class Models:
  """The student and teachers, built from the config."""
  student: Any
  teachers: dict[str, Any]
  res: dict[str, int]
  # Names ("student", teachers) of the models with a `batch_stats` collection
  # (BatchNorm): their weights are `{"params", "batch_stats"}` dicts, not a
  # bare params tree. See "Batch statistics" below.
  with_stats: frozenset[str] = frozenset()


def model_module(name: str):
  """`big_distill.models.<name>`: its Model, load() and save()."""
  try:
    return importlib.import_module(f"big_distill.models.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"big_distill.models.{name}":
      raise  # The module exists but one of its imports does not: a bug.
    raise errors.ConfigError(f"Unknown model module {name!r}: there is no "
                             f"big_distill/models/{name}.py. Use e.g. 'bit'.") from None


def get_model(name: str, kwargs: mlc.ConfigDict, num_classes: int, dtype) -> Any:
  module = model_module(name)
  try:
    return module.Model(num_classes=num_classes, dtype=dtype, **kwargs.to_dict())
  except TypeError as e:
    raise errors.ConfigError(f"Model {name!r} does not take these arguments: {e}") from None


def build_models(config: mlc.ConfigDict) -> Models:
  dtype = jnp.dtype(config.compute_dtype)
  missing = [f"{t}{s}" for t in config.teachers
             for s in ("", "_name", "_init", "_res") if f"{t}{s}" not in config]
  if missing:
    raise errors.ConfigError(
        f"config.teachers={tuple(config.teachers)} but the config has no field(s) "
        f"{missing}. Each teacher NAME needs NAME_name, NAME (model kwargs), "
        "NAME_init (checkpoint) and NAME_res (input resolution) in the config file.")
  student = get_model(config.student_name, config.student, config.num_classes, dtype)
  teachers = {t: _frozen(config[f"{t}_name"], get_model(config[f"{t}_name"], config[t],
                                                        config.num_classes, dtype))
              for t in config.teachers}
  res = {"student": config.student_res, **{t: config[f"{t}_res"] for t in config.teachers}}
  all_models = {"student": student, **teachers}
  with_stats = frozenset(n for n, m in all_models.items() if has_batch_stats(m, res[n]))
  return Models(student, teachers, res, with_stats)


def init_variables(model, res: int, key) -> dict[str, Any]:
  return dict(model.init(key, jnp.zeros((1, res, res, 3), jnp.float32)))


def _frozen(module_name: str, model) -> Any:
  """A teacher as it runs: never trained, so its module may precompute what only
  depends on its weights (BiT: the weight standardization, once at load
  instead of every step; `freeze(model, params)` / `freeze_params(params)`)."""
  module = model_module(module_name)
  return module.freeze(model, None)[0] if hasattr(module, "freeze") else model


def init_params(model, res: int, key) -> Any:
  return init_variables(model, res, key)["params"]


def variable_shapes(model, res: int) -> dict[str, Any]:
  """Every collection of the model's variables, as ShapeDtypeStructs (no compile)."""
  return jax.eval_shape(functools.partial(init_variables, model, res), jax.random.key(0))


def has_batch_stats(model, res: int) -> bool:
  return "batch_stats" in variable_shapes(model, res)


def param_shapes(model, res: int) -> Any:
  """The model's parameters as ShapeDtypeStructs (nothing allocated or compiled)."""
  return jax.eval_shape(functools.partial(init_params, model, res), jax.random.key(0))


# ---- Batch statistics --------------------------------------------------------
#
# A model with BatchNorm (e.g. mobilenet_v3 with norm="batch") has a second
# collection, `batch_stats`: running averages that the training forward pass
# updates and inference reads. Its "weights" are then the variables dict
# `{"params": ..., "batch_stats": ...}` (what its module's save/load take);
# a model without (BiT) keeps its bare params tree, so the train state,
# checkpoints and files of those runs stay as they were. The student's stats
# live in the train state beside its params (`state["batch_stats"]`, sharded
# like them, outside the optimizer and the gradients); teachers and every
# evaluation run in inference mode (train=False): the running averages.


def as_variables(models: Models, name: str, weights) -> dict[str, Any]:
  """A model's weights (params tree, or variables dict with stats) as flax variables."""
  return weights if name in models.with_stats else {"params": weights}


def weight_shapes(models: Models, name: str) -> Any:
  """`name`'s weights (see as_variables) as ShapeDtypeStructs."""
  model = models.student if name == "student" else models.teachers[name]
  shapes = variable_shapes(model, models.res[name])
  if name in models.with_stats:
    return {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}
  return shapes["params"]
