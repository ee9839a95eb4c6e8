"""Evaluators: accuracy, student-teacher distances and calibration.

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

An evaluator runs a `predict` function it is given (`setup.make_predict`);
this module knows nothing of how models are built or loaded.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from big_distill import config_lib
from big_distill import distill
from big_distill import errors
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

    `student_params`: the student's variables (with a student's batch
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

