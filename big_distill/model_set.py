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
  """The student and teachers, built from the config.

  Every model's weights are one flax variables dict (`{"params": ...}`, plus
  `{"batch_stats": ...}` for BatchNorm models), whatever its family.
  """
  student: Any
  teachers: dict[str, Any]   # As they run: frozen (`freeze`), never trained.
  res: dict[str, int]
  # The teachers as the config builds them, before `freeze`: what their
  # weights are loaded into (and frozen with, once loaded).
  configured: dict[str, Any] = dataclasses.field(default_factory=dict)


def model_module(name: str):
  """`big_distill.models.<name>`: a family of the model contract (models/__init__.py)."""
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
  configured = {t: get_model(config[f"{t}_name"], config[t], config.num_classes, dtype)
                for t in config.teachers}
  # The frozen model alone (its weights are frozen when they are loaded):
  # the step is built before any weights exist.
  teachers = {t: model_module(config[f"{t}_name"]).freeze(m, None)[0]
              for t, m in configured.items()}
  res = {"student": config.student_res, **{t: config[f"{t}_res"] for t in config.teachers}}
  return Models(student, teachers, res, configured)


def init_variables(model, res: int, key) -> dict[str, Any]:
  """The model's initial variables (every collection), for images at `res`."""
  return dict(model.init(key, jnp.zeros((1, res, res, 3), jnp.float32)))


def variable_shapes(model, res: int) -> dict[str, Any]:
  """Every collection of the model's variables, as ShapeDtypeStructs (no compile)."""
  return jax.eval_shape(functools.partial(init_variables, model, res), jax.random.key(0))


def weight_shapes(models: Models, name: str) -> dict[str, Any]:
  """The variables of `name` ("student" or a teacher) as ShapeDtypeStructs."""
  model = models.student if name == "student" else models.teachers[name]
  return variable_shapes(model, models.res[name])
