r"""Evaluators: accuracy, student-teacher distances and calibration; and the command

    python -m big_distill.evaluate --config=configs/flowers_r50.py --init=PATH \
        [--workdir=DIR]

that runs a config's evaluators on any checkpoint without training (see
`evaluate_checkpoint` below), printing and writing the metrics the trainer
logs.

Each evaluator in `config.evals` has its own data, preprocessing and period,
and writes metrics named `<eval name>/<metric>`:

- `classification`: `<model>_top1`, `<model>_top5`, `<model>_loss` (labelled
  cross-entropy) for the student and each teacher;
- `distance`: for each teacher `<teacher>_kl`, `<teacher>_euclidean`,
  `<teacher>_agree_top1` (same top-1), `<teacher>_agree_top5` (teacher's top-1
  in the student's top-5);
- `calibration`: `<model>_ece` (expected calibration error, equal-width bins
  of confidence) and `<model>_confidence`.

Teachers never change, so their own metrics are computed once and repeated
in every later report (which draws the teacher's line in the plots).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

from big_distill import checkpoint as ckpt_lib
from big_distill import config_lib
from big_distill import distill
from big_distill import errors
from big_distill import fileio
from big_distill.data import input as input_lib
from big_distill.data import pp as pp_lib

TYPES = ("classification", "distance", "calibration")


def _top_k_correct(logits_BK, labels_B, k):
  k = min(k, logits_BK.shape[-1])
  top = jax.lax.top_k(logits_BK, k)[1]
  return jnp.any(top == labels_B[:, None], axis=-1).astype(jnp.float32)


def _ece_bins(logits_BK, labels_B, mask_B, bins):
  probs = jax.nn.softmax(logits_BK.astype(jnp.float32), axis=-1)
  conf = probs.max(-1)
  correct = (probs.argmax(-1) == labels_B).astype(jnp.float32)
  idx = jnp.clip((conf * bins).astype(jnp.int32), 0, bins - 1)
  onehot = jax.nn.one_hot(idx, bins) * mask_B[:, None]
  return {"count": onehot.sum(0), "conf": (onehot * conf[:, None]).sum(0),
          "correct": (onehot * correct[:, None]).sum(0)}


def _sums(kind: str, logits: dict[str, jax.Array], batch, teachers, bins) -> dict:
  """Masked sums over one batch (reduced across devices by XLA)."""
  mask = batch["_mask"].astype(jnp.float32)
  out = {"n": mask.sum()}
  if kind == "classification":
    labels = batch["label"]
    for name, lg in logits.items():
      onehot = jax.nn.one_hot(labels, lg.shape[-1])
      out[f"{name}_top1"] = (_top_k_correct(lg, labels, 1) * mask).sum()
      out[f"{name}_top5"] = (_top_k_correct(lg, labels, 5) * mask).sum()
      out[f"{name}_loss"] = (distill.softmax_xent(lg, onehot) * mask).sum()
  elif kind == "distance":
    for t in teachers:
      for m, v in distill.distances(logits["student"], logits[t]).items():
        out[f"{t}_{m}"] = (v.astype(jnp.float32) * mask).sum()
  elif kind == "calibration":
    for name, lg in logits.items():
      out[f"{name}_ece"] = _ece_bins(lg, batch["label"], mask, bins)
  return out


def _finish(kind: str, totals: dict) -> dict[str, float]:
  n = max(float(totals.pop("n")), 1.0)
  out = {}
  for k, v in totals.items():
    if kind == "calibration":
      count, conf, correct = (np.asarray(v[x], np.float64) for x in ("count", "conf", "correct"))
      out[k] = float(np.abs(conf - correct).sum() / n)
      out[k.replace("_ece", "_confidence")] = float(conf.sum() / n)
    else:
      out[k] = float(v) / n
  return out


def batch_metrics(kind: str, logits: dict[str, jax.Array], batch, *, teachers=(),
                  bins: int = 15) -> dict[str, float]:
  """The metrics of an evaluator of type `kind` over one batch (what `run` does
  per batch and over all of them): masked means, ECE from the summed bins."""
  return _finish(kind, jax.device_get(_sums(kind, logits, batch, tuple(teachers), bins)))


def eval_models(config, name: str) -> tuple[str, ...]:
  """The models that `config.evals.<name>` evaluates ('student' first)."""
  ec, teachers = config.evals[name], tuple(config.teachers)
  if ec.type == "distance":
    return ("student", *teachers)
  if ec.models == "all":
    return ("student", *teachers)
  return tuple(m.strip() for m in ec.models.split(","))


def check_eval(config, name: str) -> None:
  """`config.evals.<name>` can run: the one place that checks an evaluator's config."""
  ec, teachers = config.evals[name], tuple(config.teachers)
  if ec.type not in TYPES:
    raise errors.ConfigError(f"config.evals.{name}.type={ec.type!r}: must be one of {TYPES}.")
  if ec.type == "distance" and not teachers:
    raise errors.ConfigError(f"config.evals.{name} is a 'distance' eval, which needs teachers; "
                             "this config has none.")
  unknown = set(eval_models(config, name)) - {"student", *teachers}
  if unknown:
    raise errors.ConfigError(
        f"config.evals.{name}.models names unknown models {sorted(unknown)}; "
        f"known: student, {', '.join(teachers)}.")
  try:
    pp_lib.parse(ec.pp)
  except ValueError as e:
    raise errors.ConfigError(f"config.evals.{name}.pp: {e}") from e


class Evaluator:
  """One entry of `config.evals`, bound to the models and the mesh."""

  def __init__(self, name: str, config, *, predict: Callable, teachers, mesh,
               batch_sharding, steps: dict | None = None):
    """`steps`: jitted steps shared by the evaluators of one run, keyed by what
    the step computes (type, ECE bins, teachers). Evaluators of the same type
    (`val` and `test`, say) then compile one program for batches of one shape,
    not one each. `None`: this evaluator's own."""
    check_eval(config, name)
    self.name = name
    self.ec = config.evals[name]
    self.models = eval_models(config, name)
    self.config = config
    self.teachers = tuple(teachers)
    self._sharding = batch_sharding
    self._teacher_cache: dict[str, float] | None = None
    kind, bins = self.ec.type, self.ec.ece_bins
    steps = {} if steps is None else steps
    key = (kind, bins, self.teachers)
    if key not in steps:
      teachers = self.teachers

      def step(student_params, teacher_params, batch, which):
        logits = predict(student_params, teacher_params, batch["image"], which)
        return _sums(kind, logits, batch, teachers, bins)

      steps[key] = jax.jit(step, static_argnums=3)
    self._step = steps[key]
    # Built once and re-iterated (deterministically), so cache_raw caches.
    self._ds, _ = input_lib.make_eval_dataset(config, name)

  def _run(self, student_params, teacher_params, which) -> dict[str, float]:
    totals = None
    for batch in input_lib.to_global(self._ds, self._sharding):
      sums = self._step(student_params, teacher_params, batch, which)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return _finish(self.ec.type, jax.device_get(totals))

  def run(self, student_params, teacher_params) -> dict[str, float]:
    """Metrics of this evaluator, as `{f"{name}/{metric}": value}`.

    `student_params`: `setup.student_weights(state)` (with a student's batch
    statistics, if it has them: evaluation uses their running averages).
    """
    if self.ec.type == "distance":
      out = self._run(student_params, teacher_params, self.models)
    else:
      own = tuple(m for m in self.models if m == "student")
      out = self._run(student_params, teacher_params, own) if own else {}
      teachers = tuple(m for m in self.models if m != "student")
      if teachers:
        if self._teacher_cache is None:  # Teachers are frozen: once is enough.
          self._teacher_cache = self._run(student_params, teacher_params, teachers)
        out.update(self._teacher_cache)
    return {f"{self.name}/{k}": v for k, v in out.items()}


def period(config, name: str, *, num_examples: int, batch_size: int, total_steps: int) -> int:
  return config_lib.steps("log", config.evals[name], num_examples=num_examples,
                          batch_size=batch_size, total_steps=total_steps,
                          default=total_steps)


# ---- The command: a config's evaluators on a checkpoint ----------------------
#
#     python -m big_distill.evaluate --config=configs/flowers_r50.py \
#         --init=PATH [--workdir=DIR]
#
# PATH is a weights .npz (BiT layout, or any layout the config's model module
# reads), a gs:// path, or the workdir of a run: its student.npz, else its
# newest orbax checkpoint; without --init, the config's teachers alone. The
# config's teachers are loaded as the trainer loads them. Prints one JSON line and writes it to
# DIR/evaluate_<name of PATH>.json (DIR: the run's workdir when PATH is one,
# else the config's default workdir).


def _student_params(config, s, init: str) -> tuple[object, str]:
  """(the student's parameters on the mesh, where they came from)."""
  # Imported here, not at the top: setup builds its evaluators from this module.
  from big_distill import setup  # pylint: disable=g-import-not-at-top
  gfile = tf.io.gfile
  if not setup.readable(init, "init"):
    raise errors.CheckpointError(f"--init={init} does not exist. Give a weights .npz "
                                 "(local or gs://) or the workdir of a run.")
  source = init
  if gfile.isdir(init):
    exported = os.path.join(init, "student.npz")
    checkpoints = os.path.join(init, "checkpoints")
    if gfile.exists(exported):
      source = exported
    elif gfile.isdir(checkpoints) and gfile.listdir(checkpoints):
      ckpt = ckpt_lib.Checkpointer(checkpoints, keep=config.keep_ckpts,
                                   replica_parallel=config.ckpt_replica_parallel)
      try:
        restored = ckpt.restore(s.state)
      finally:
        ckpt.close()
      if restored is not None:
        step, state = restored
        return state["params"], f"{checkpoints} step {step}"
    else:
      raise errors.CheckpointError(
          f"--init={init} is a directory with neither student.npz nor checkpoints/: "
          "give a weights .npz or the workdir of a run.")
  host = setup.load_trained(config, "student", s.models.student, source, where=f"--init={init}: ")
  return jax.tree.map(jax.device_put, host, s.state_sharding["params"]), source


def teachers_only(config):
  """`config` with every evaluator restricted to the teachers (no distances)."""
  if not config.teachers:
    raise errors.ConfigError("This config has no teachers: give --init=PATH, the weights "
                             "to evaluate.")
  c = config.copy_and_resolve_references()
  with c.unlocked():
    for name in list(c.evals):
      if c.evals[name].type == "distance":
        del c.evals[name]
      else:
        c.evals[name].models = ",".join(config.teachers)
  return c


def evaluate_checkpoint(config, init: str | None) -> dict:
  """Runs every evaluator of `config` on the weights `init`, through the
  trainer's own set-up; returns {"init", "weights", "metrics"}.

  Without `init`, the config's teachers alone (e.g. to check a released
  teacher's accuracy, and which `stem_pool_pad` fits it).
  """
  from big_distill import setup  # pylint: disable=g-import-not-at-top
  if init is None:
    config = teachers_only(config)
  setup.check_config(config)
  models = setup.build_models(config)
  setup.check_data(config)
  setup.check_inits(config, student=False)  # --init replaces config.student_init.
  mesh = setup.make_mesh(config)
  d = setup.durations(config)
  s = setup.build(config, models, mesh, total_steps=d.total, warmup_steps=d.warmup)
  teacher_params = setup.load_teachers(config, models, mesh)
  params, source = (None, "teachers only") if init is None else _student_params(config, s, init)
  metrics = {}
  for e in setup.make_evaluators(config, models, mesh):
    metrics.update(e.run(params, teacher_params))
  return {"init": init, "weights": source, "metrics": metrics}


def output_path(init: str | None, workdir: str) -> str:
  """`workdir/evaluate_<file-system-safe name of init>.json`."""
  name = os.path.basename(os.path.normpath(init)) if init else "teachers"
  return os.path.join(workdir, f"evaluate_{re.sub(r'[^A-Za-z0-9.-]+', '_', name)}.json")


def define_flags(values=None) -> None:
  """The command's flags (only when run as a command: importing defines none)."""
  values = values if values is not None else flags.FLAGS
  config_flags.DEFINE_config_file("config", None, "Config file whose evaluators run, e.g. "
                                  "configs/flowers_r50.py.", flag_values=values,
                                  lock_config=True)
  flags.DEFINE_string("init", None, "Weights to evaluate: an .npz (local or gs://) or a "
                      "run's workdir. Without it: the config's teachers alone.",
                      flag_values=values)
  flags.DEFINE_string("workdir", None, "Where the JSON goes (default: the run's workdir if "
                      "--init is one, else the config's default workdir).", flag_values=values)


def main(argv):
  del argv
  f = flags.FLAGS
  if not f["config"].present:
    raise app.UsageError("Give --config=configs/X.py[:args] [--init=PATH].")
  try:
    out = evaluate_checkpoint(f.config, f.init or None)  # The config file runs here.
  except (errors.UserError, ckpt_lib.CheckpointError) as e:
    print(f"big_distill.evaluate: error: {e}", file=sys.stderr)
    sys.exit(2)
  workdir = f.workdir
  if not workdir:
    is_run = f.init and tf.io.gfile.isdir(f.init)
    workdir = f.init if is_run else config_lib.default_workdir(
        config_flags.get_config_filename(f["config"]))
  tf.io.gfile.makedirs(workdir)
  path = output_path(f.init, workdir)
  with fileio.atomic_write(path) as file:
    json.dump(out, file, indent=2, sort_keys=True)
  print(json.dumps(out, sort_keys=True), flush=True)
  print(f"Wrote {path}.", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=config_lib.flags_parser("big_distill.evaluate"))
