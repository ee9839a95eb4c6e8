"""On-device mixup, distillation losses and student-teacher distances.

Everything here is float32, per example (shape [B]) and free of host syncs, so
it can sit inside the jitted train and eval steps. Losses take
`(student_logits_BK, teacher_logits_BK)` and stop the gradient to the teacher.

Several teachers: the trainer sums the per-teacher losses. For `kl` that sum
is `sum_i KL(q_i || p) = N * KL(mean_i q_i || p) + const`, i.e. (N times)
distillation from the probability-space ensemble of the teachers.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from big_distill import errors

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


# ---- Mixup -----------------------------------------------------------------

def mixup(rng: jax.Array, p: float | None, *arrays_or_trees: Any):
  """Mixes every example with its neighbour: `a*x + (1-a)*roll(x, 1, axis=0)`.

  One coefficient for the whole batch, `a ~ Beta(p, p)`, `a = max(a, 1-a)`,
  and one partner (the batch rolled by one), shared by every array and tree
  leaf given: the images of all models (function matching feeds the *same*
  mixed image to the student and every teacher) and optionally one-hot labels.
  Rolling by one pairs every example with a different one; reversing the batch
  would pair i with B-1-i and back, making duplicate pairs.

  Args:
    rng: a PRNG key.
    p: Beta parameter, a Python number. 0 or None: no mixup (a = 1).
    *arrays_or_trees: arrays or pytrees of floating arrays, batch on axis 0.

  Returns:
    `(*mixed, a)`, `mixed` with the structures and dtypes given, `a` f32[].
  """
  for leaf in jax.tree.leaves(arrays_or_trees):
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise TypeError(f"mixup mixes floating arrays (images, one-hot labels); got "
                      f"{leaf.dtype} of shape {leaf.shape}. Convert integer labels "
                      "with jax.nn.one_hot first.")
  if not p:
    return (*arrays_or_trees, jnp.ones([], jnp.float32))
  a = jax.random.beta(rng, p, p, dtype=jnp.float32)
  a = jnp.maximum(a, 1.0 - a)

  def mix(x):
    x32 = x.astype(jnp.float32)
    return (a * x32 + (1.0 - a) * jnp.roll(x32, 1, axis=0)).astype(x.dtype)

  return (*jax.tree.map(mix, arrays_or_trees), a)


# ---- Per-example building blocks -------------------------------------------

def _f32(*xs):
  return [jnp.asarray(x, jnp.float32) for x in xs]


def _safe_norm(x_BK: jax.Array) -> jax.Array:
  """L2 norm over the last axis with a zero (not NaN) gradient at x = 0."""
  sq = jnp.sum(jnp.square(x_BK), axis=-1)
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def softmax_xent(logits_BK: jax.Array, labels_BK: jax.Array) -> jax.Array:
  """Cross-entropy `-sum(labels * log_softmax(logits))`, per example."""
  logits_BK, labels_BK = _f32(logits_BK, labels_BK)
  return -jnp.sum(labels_BK * jax.nn.log_softmax(logits_BK), axis=-1)


def entropy(logits_BK: jax.Array) -> jax.Array:
  """Entropy of `softmax(logits)` in nats, per example."""
  (logits_BK,) = _f32(logits_BK)
  logp_BK = jax.nn.log_softmax(logits_BK)
  return -jnp.sum(jnp.exp(logp_BK) * logp_BK, axis=-1)


# ---- Losses ----------------------------------------------------------------

def kl(student_BK: jax.Array, teacher_BK: jax.Array, *, t: float = 1.0) -> jax.Array:
  """`t^2 * KL(softmax(teacher/t) || softmax(student/t))`, per example.

  The t^2 keeps the gradient's size independent of the temperature (Hinton et
  al.), so the learning rate need not change with t.
  """
  student_BK, teacher_BK = _f32(student_BK, jax.lax.stop_gradient(teacher_BK))
  logq_BK = jax.nn.log_softmax(teacher_BK / t)
  logp_BK = jax.nn.log_softmax(student_BK / t)
  return t**2 * jnp.sum(jnp.exp(logq_BK) * (logq_BK - logp_BK), axis=-1)


def euclidean(student_BK: jax.Array, teacher_BK: jax.Array) -> jax.Array:
  """`||student - teacher||_2` of the logits, per example (not squared).

  Not squared, so that the loss is the same number as the paper's logged
  "euclidean distance of logits" (and as `distances()['euclidean']`). Its
  gradient has norm 1 per example whatever the distance; the squared version
  (logit MSE) would weigh far-off examples more.
  """
  student_BK, teacher_BK = _f32(student_BK, jax.lax.stop_gradient(teacher_BK))
  return _safe_norm(student_BK - teacher_BK)


def logsoftmax_euclidean(student_BK: jax.Array, teacher_BK: jax.Array) -> jax.Array:
  """`||log_softmax(student) - log_softmax(teacher)||_2`, per example.

  Unlike raw logits, log-softmaxes ignore the per-example shift that softmax
  ignores too.
  """
  student_BK, teacher_BK = _f32(student_BK, jax.lax.stop_gradient(teacher_BK))
  return _safe_norm(jax.nn.log_softmax(student_BK) - jax.nn.log_softmax(teacher_BK))


def hard(student_BK: jax.Array, teacher_BK: jax.Array) -> jax.Array:
  """Cross-entropy of the student on the teacher's top-1 class, per example."""
  top1_B = jnp.argmax(teacher_BK, axis=-1)
  return softmax_xent(student_BK, jax.nn.one_hot(top1_B, student_BK.shape[-1]))


# Name -> (function, the keyword arguments it takes).
LOSSES: dict[str, tuple[Callable[..., jax.Array], tuple[str, ...]]] = {
    "kl": (kl, ("t",)),
    "euclidean": (euclidean, ()),
    "logsoftmax_euclidean": (logsoftmax_euclidean, ()),
    "hard": (hard, ()),
}


def get_loss(name: str, **kw: Any) -> LossFn:
  """The per-example loss `fn(student_logits, teacher_logits) -> f32[B]`."""
  if name not in LOSSES:
    raise errors.ConfigError(f"Unknown distillation loss {name!r} (config.distill.loss); "
                             f"known: {', '.join(LOSSES)}.")
  fn, allowed = LOSSES[name]
  unknown = sorted(set(kw) - set(allowed))
  if unknown:
    raise TypeError(f"Loss {name!r} takes no argument(s) {unknown}; it takes "
                    f"{list(allowed) or 'none'}.")
  return lambda student_BK, teacher_BK: fn(student_BK, teacher_BK, **kw)


def from_config(distill_config: Any) -> LossFn:
  """`get_loss` for `config.distill`: the temperature goes to `kl` only."""
  c = distill_config
  return get_loss(c.loss, **({"t": c.t} if c.loss == "kl" else {}))


# ---- Distances (for logging and evaluation) --------------------------------

def distances(student_BK: jax.Array, teacher_BK: jax.Array) -> dict[str, jax.Array]:
  """What users watch during distillation, per example (f32[B] each).

  kl (t=1), euclidean (of logits), agree_top1 (same top-1 class) and
  agree_top5 (the teacher's top-1 is among the student's top-5, or top-K when
  there are fewer than 5 classes).
  """
  student_BK, teacher_BK = _f32(student_BK, teacher_BK)
  k = min(5, student_BK.shape[-1])
  teacher_top1_B = jnp.argmax(teacher_BK, axis=-1)
  _, student_topk_Bk = jax.lax.top_k(student_BK, k)
  return {
      "kl": kl(student_BK, teacher_BK),
      "euclidean": euclidean(student_BK, teacher_BK),
      "agree_top1": (student_topk_Bk[:, 0] == teacher_top1_B).astype(jnp.float32),
      "agree_top5": jnp.any(student_topk_Bk == teacher_top1_B[:, None],
                            axis=-1).astype(jnp.float32),
  }
