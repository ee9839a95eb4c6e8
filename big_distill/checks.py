"""Checks of a config, its data and its files: everything that needs no compile.

Every entry point runs them first, so that a mistake is one `errors.UserError`
line before anything is built, compiled or written:

    checks.check_config(config)    # no data, no weights
    checks.check_data(config)      # the data sets are prepared, with the classes
    checks.check_inits(config)     # the teachers' (and student's) files exist

`check_step_config` is the part the train step alone needs (the benchmark on
synthetic batches): it imports no TensorFlow. The checks of the data, the pp
strings and the files import it (and TFDS) when they run.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from absl import logging
import ml_collections as mlc

from big_distill import config_lib
from big_distill import distill
from big_distill import errors
from big_distill import input_modes
from big_distill import precompute


@contextlib.contextmanager
def config_errors(where: str = "") -> Iterator[None]:
  """Reports the ValueErrors of a validating call as one ConfigError.

  parallel, optim and pp validate the config fields they read and say what is
  wrong with a ValueError; around those calls (and only those: elsewhere a
  ValueError is a bug), it is the user's mistake, reported as one line.
  """
  try:
    yield
  except errors.UserError:
    raise
  except ValueError as e:
    raise errors.ConfigError(f"{where}{e}") from e


def check_step_config(config: mlc.ConfigDict) -> None:
  """The checks of what the train step reads: views, loss, fixed teachers, mixup."""
  input_modes.check_views(config.distill.views)
  input_modes.cache_mode(config)
  distill.from_config(config.distill)
  precompute.check_config(config)
  if config.mixup.p is not None and config.mixup.p < 0:
    raise errors.ConfigError(f"config.mixup.p={config.mixup.p} must be >= 0 (0 disables mixup).")


def check_config(config: mlc.ConfigDict) -> None:
  """Every check that needs no data, no weights and no compile."""
  # pylint: disable=g-import-not-at-top  (TensorFlow: only where it runs)
  from big_distill import evaluators
  from big_distill.data import pp as pp_lib
  # pylint: enable=g-import-not-at-top
  config_lib.check_required(config)  # Also for in-process runs (the CLI checks it first).
  check_step_config(config)
  for field in ("pp", "pp_random", "pp_fixed", "pp_post"):
    with config_errors(f"config.input.{field}: "):
      pp_lib.parse(config.input[field])
  for name in config.evals:
    evaluators.check_eval(config, name)


def _labelled_evals(config: mlc.ConfigDict) -> list[tuple[str, Any]]:
  return [(f"config.evals.{n}.data", ec.data) for n, ec in config.evals.items()
          if ec.type in ("classification", "calibration")]


def training_labels_are_the_tasks(config: mlc.ConfigDict) -> bool:
  """Whether the training images are the task's own data, with its labels.

  The task is what the labelled evaluators read. A config that distils on
  another data set's images (paper Section 3.8: a Pets teacher on Food101
  images) says so by its data names alone: `config.input.data.name` is none
  of its labelled evaluators' data. Those images' labels (if any) mean
  nothing for the task, so the step neither mixes nor logs them, and no
  class count is compared. A config without labelled evaluators trains on
  its task's data.
  """
  names = {d.name for _, d in _labelled_evals(config)}
  return not names or config.input.data.name in names


def check_num_classes(config: mlc.ConfigDict) -> None:
  """config.num_classes against the labels of the training and labelled eval data.

  The training data's labels are checked only when they are the task's
  (`training_labels_are_the_tasks`); otherwise one log line says they are
  ignored. A run without teachers (supervised) needs the task's labels.
  """
  from big_distill.data import datasets  # pylint: disable=g-import-not-at-top
  datas = _labelled_evals(config)
  if training_labels_are_the_tasks(config):
    datas = [("config.input.data", config.input.data)] + datas
  elif not config.teachers:
    raise errors.ConfigError(
        f"config.input.data is {config.input.data.name}, but the labelled evals read "
        f"{sorted({d.name for _, d in datas})}: a run without teachers learns from the "
        "training data's labels, which must be the task's. Train on the task's data, "
        "or add teachers (config.teachers) to distil on another data set's images.")
  else:
    logging.info("Distilling on the images of %s, another data set than the task's (%s): "
                 "the labels of the training data are ignored (no label loss, no "
                 "supervised metrics on the training stream).", config.input.data.name,
                 ", ".join(sorted({d.name for _, d in datas})))
  for where, data in datas:
    n = datasets.num_classes(data)
    if n is not None and n != config.num_classes:
      raise errors.ConfigError(
          f"config.num_classes={config.num_classes}, but {where} ({data.name}) has {n} "
          f"classes. Set --config.num_classes={n}, and use teachers fine-tuned on "
          f"{data.name} (their heads must have {n} outputs).")


def check_data(config: mlc.ConfigDict) -> None:
  """The training and every eval data set are prepared, with the config's classes."""
  from big_distill.data import datasets  # pylint: disable=g-import-not-at-top
  datasets.check_prepared(config.input.data)
  for ec in config.evals.values():
    datasets.check_prepared(ec.data)
  check_num_classes(config)


def resolve_init(path: str) -> str:
  """A weights .npz, or a workdir of a finished run (its exported student.npz)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile: gs:// paths)
  gfile = tf.io.gfile
  if gfile.isdir(path):
    exported = os.path.join(path, "student.npz")
    if not gfile.exists(exported):
      raise errors.CheckpointError(
          f"{path} is a directory without student.npz: that run has not finished "
          "(student.npz is written at the end of training). Give its .npz or let it finish.")
    return exported
  return path


def readable(path: str, field: str) -> bool:
  """Whether `path` exists; a remote path that cannot be reached is an error.

  Remote files (gs://bit_models/distill/... of the paper's release) are read
  through tf.io.gfile; without network or credentials gfile fails within
  seconds, and the message says how to use a local copy instead.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile: gs:// paths)
  file, sub = split_sub_tree(path)
  try:
    return tf.io.gfile.exists(file)
  except tf.errors.OpError as e:
    if "://" not in file:
      raise
    reason = str(e).strip().splitlines()[0]
    raise errors.CheckpointError(
        f"config.{field}={path} cannot be read ({reason}). Copy it to this "
        f"machine, e.g. `gsutil cp {file} DIR/` (or download "
        f"{file.replace('gs://', 'https://storage.googleapis.com/', 1)}), then pass "
        f"--config.{field}=DIR/{os.path.basename(file)}{sub}.") from None


def split_sub_tree(path: str) -> tuple[str, str]:
  """`file.npz:img` (a sub-tree of the file, models/__init__.py) -> ("file.npz", ":img")."""
  head, sep, sub = path.rpartition(".npz:")
  return (head + ".npz", ":" + sub) if sep and sub else (path, "")


def check_inits(config: mlc.ConfigDict, student: bool = True) -> None:
  """The teachers' (and, with `student`, the student's initial) checkpoints
  exist: a name of a family's published checkpoints is checked as the file it
  stands for (the contract's `locate`)."""
  from big_distill import model_set  # pylint: disable=g-import-not-at-top
  located = lambda name: model_set.model_module(config[f"{name}_name"]).locate(
      config[f"{name}_init"])
  for t in config.teachers:
    if not config[f"{t}_init"]:
      raise errors.ConfigError(f"Teacher {t!r} has no checkpoint: set config.{t}_init to its "
                               "weights .npz or the workdir of a finished run.")
    path = located(t)
    if not readable(path, f"{t}_init"):
      raise errors.ConfigError(
          f"Teacher {t!r}: checkpoint {path} does not exist. Fine-tune the teacher "
          "first (configs/teachers/, see the config's docstring) or set "
          f"config.{t}_init to its student.npz, its workdir, or a gs:// path.")
    resolve_init(path)  # A workdir must hold its student.npz.
  if student and config.student_init:
    path = located("student")
    if not readable(path, "student_init"):
      raise errors.ConfigError(f"config.student_init: {path} does not exist.")
    resolve_init(path)
