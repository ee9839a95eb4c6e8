"""The weights of a run's models: teachers, the student's start, a model to evaluate.

Each model's family reads its files (`load` of the model contract,
models/__init__.py) into a template of the model's variables, as numpy;
teachers are then frozen (`freeze`), cast to the compute dtype once and
sharded. This module knows no family: it uses only the contract.
"""

from __future__ import annotations

import functools
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


def zeros_template(model, res: int) -> dict[str, Any]:
  """The model's variables as zeros (numpy): a template that `load` fills in."""
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes(model, res))


def load_weights(config: mlc.ConfigDict, name: str, model, path: str, *, template=None,
                 where: str | None = None, head_mismatch: str = "reinit") -> Any:
  """`config.<name>_name`'s `load` of `path` into `model`'s variables, as numpy.

  `template`: the variables `load` fills in (default: zeros of the model's
  shapes); with head_mismatch="reinit", a head of another class count is
  the template's. A file that does not fit the model is the config's mistake
  (its depth, width or num_classes, or the path): the family raises a
  CheckpointError naming the arrays (a ValueError is reported the same way),
  once. By default it is prefixed by the config fields to check
  (`config.<name>_init`, `config.<name>`); a caller's `where` prefixes only
  ValueErrors (evaluate's `--init=`).
  """
  module = model_module(config[f"{name}_name"])
  if template is None:
    template = zeros_template(model, config[f"{name}_res"])
  # From a config field: the family's message (the arrays) after the fields.
  fields = (f"config.{name}_init={path} (for config.{name}, a {config[f'{name}_name']!r}): "
            if where is None else None)
  with config_errors(where if where is not None else fields):
    file = resolve_init(path)
    try:
      return module.load(template, file, head_mismatch=head_mismatch, model=model)
    except errors.CheckpointError as e:
      if fields is None:
        raise
      # The file does not fit the config's fields: one error naming them first.
      raise errors.CheckpointMismatchError(f"{fields}{e}") from e


def load_trained(config: mlc.ConfigDict, name: str, model, path: str,
                 where: str | None = None) -> Any:
  """Trained weights (a teacher, or a model to evaluate): its logits must be
  this data set's, so a head of another class count is an error."""
  return load_weights(config, name, model, path, where=where, head_mismatch="error")


def freeze(config: mlc.ConfigDict, models: Models, t: str, host: Any) -> Any:
  """Teacher `t`'s float32 variables as its frozen model (`models.teachers[t]`)
  takes them: its family's `freeze`, once."""
  frozen_model, frozen = model_module(config[f"{t}_name"]).freeze(models.configured[t], host)
  if frozen_model != models.teachers[t]:
    raise AssertionError(f"freeze() of teacher {t!r} gave another model than at build time.")
  return frozen


def put_teacher(config: mlc.ConfigDict, mesh, host: Any) -> Any:
  """Sharded over fsdp where large, and cast once to the compute dtype, not every step."""
  sharding = parallel.param_shardings(mesh, host, config.fsdp_min_size)
  return jax.tree.map(lambda x, s: jax.device_put(x.astype(config.compute_dtype), s),
                      host, sharding)


def load_teachers(config: mlc.ConfigDict, models: Models, mesh) -> dict[str, Any]:
  """The teachers' variables: loaded, checked against their configs, frozen, sharded, cast."""
  return {t: put_teacher(config, mesh, freeze(config, models, t, load_trained(
      config, t, models.configured[t], config[f"{t}_init"])))
          for t in models.teachers}


def initial_variables(config: mlc.ConfigDict, models: Models) -> Any:
  """The student's initial variables (numpy), as the train state starts them."""
  init = functools.partial(init_variables, models.student, models.res["student"])
  return jax.device_get(jax.jit(init)(jax.random.key(config.seed)))


def load_student_init(config: mlc.ConfigDict, models: Models) -> Any | None:
  """`config.student_init` as the student's variables, numpy (None: from scratch).

  Loaded into the student's initial values (head_mismatch="reinit": a head of
  another class count, as a pretrained model's, keeps its initial values).
  """
  if not config.student_init:
    return None
  return load_weights(config, "student", models.student, config.student_init,
                      template=initial_variables(config, models))


def random_params(model, res: int, key, dtype=jnp.float32) -> Any:
  """Random variables with a random head, in `dtype` (jit it).

  A head may start at zero (BiT's does), which would make every output
  uniform: a random teacher must have a head, so that its targets (and FLOPs)
  are realistic.
  """
  variables = init_variables(model, res, key)
  params = variables["params"]
  kernel = params["head"]["kernel"]
  head = jax.random.normal(jax.random.fold_in(key, 1), kernel.shape) / math.sqrt(kernel.shape[0])
  params = {**params, "head": {**params["head"], "kernel": head}}
  return jax.tree.map(lambda x: x.astype(dtype), {**variables, "params": params})
