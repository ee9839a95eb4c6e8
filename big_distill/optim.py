"""The optimizer and learning-rate schedule of a run, from its config.

`make(config, params, total_steps=..., warmup_steps=...)` returns `(tx,
schedule)`. `schedule(step)` is a multiplier in [0, 1] (linear warm-up, then
cosine, linear, constant or quadratic), and `tx` is, in order:

1. global-norm gradient clipping at `config.grad_clip_norm` (None or 0: none);
2. the direction `config.optim.name`: 'adam' (first moment in
   `config.optim.mu_dtype`, bfloat16 in the paper), 'sgd' (momentum), 'muon',
   or 'shampoo' (`shampoo.py`; `config.optim.b1` is its momentum decay too,
   and `PAPER_SHAMPOO` the paper's setting of its fields);
3. `-config.lr * schedule(step)`;
4. decoupled weight decay `-config.wd * schedule(step) * param` on kernels only
   (parameters whose path ends in 'kernel': conv and dense kernels; not biases
   nor GroupNorm's scale and bias). As in big_vision, the decay is *not*
   multiplied by the base learning rate, only by the schedule, so `wd` is the
   fraction of a kernel removed per step at the schedule's peak.

`config.optim.mu_dtype` is the dtype of every first moment (Adam's, the SGD
and Muon momenta, Shampoo's): bfloat16 halves that memory at no cost in the
paper's runs.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon

from big_distill import shampoo
from big_distill.errors import ConfigError

DIRECTIONS = ("adam", "sgd", "muon", "shampoo")
DECAY_TYPES = ("cosine", "linear", "constant", "quadratic")

# The paper's Shampoo (Appendix D: blocks of at most 128x128, inverse roots
# every step, Nesterov momentum, "identical to" Anil et al.'s ResNet-50 recipe,
# whose public settings add SGD grafting, beta1 0.95, beta2 0.85 and 25 steps
# before preconditioning), as `config.optim` fields. With SGD grafting the
# step is SGD's, so the learning rate is SGD's scale, not Adam's. The paper's
# schedule: warm-up 1,800 steps then `schedule.decay_type = "quadratic"`.
PAPER_SHAMPOO = dict(
    name="shampoo", b1=0.95, shampoo_b2=0.85, shampoo_block_size=128,
    shampoo_precond_every=1, shampoo_start_preconditioning=25,
    shampoo_graft="sgd", shampoo_nesterov=True, shampoo_graft_per_block=False)
Schedule = Callable[[jax.Array | int], jax.Array]


def make(config: mlc.ConfigDict, params: Any, *, total_steps: int,
         warmup_steps: int) -> tuple[optax.GradientTransformation, Schedule]:
  """`(tx, schedule)` for `params` (arrays or `jax.ShapeDtypeStruct`s)."""
  sched = make_schedule(config.schedule, total_steps=total_steps,
                        warmup_steps=warmup_steps)
  lr, wd = config.lr, config.wd
  txs = []
  if config.grad_clip_norm:
    txs.append(optax.clip_by_global_norm(config.grad_clip_norm))
  txs.append(direction(config.optim, params))
  txs.append(optax.scale_by_schedule(lambda step: -lr * sched(step)))
  if wd:
    txs.append(optax.add_decayed_weights(lambda step: -wd * sched(step),
                                         mask=kernel_mask(params)))
  return optax.chain(*txs), sched


def make_schedule(c: mlc.ConfigDict, *, total_steps: int, warmup_steps: int) -> Schedule:
  """The multiplier of `config.schedule`: 0 -> 1 in `warmup_steps`, then decay.

  The decay runs from the end of the warm-up to `total_steps`: 'cosine' to 0,
  'linear' to `c.linear_end`, 'quadratic' to 0 (`(1 - progress)^2`, the
  paper's Shampoo schedule), or 'constant'.
  """
  if c.decay_type not in DECAY_TYPES:
    raise ValueError(f"Unknown schedule.decay_type {c.decay_type!r}; known: "
                     f"{', '.join(DECAY_TYPES)}.")
  warmup_steps = warmup_steps or 0
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"Warm-up of {warmup_steps} steps does not fit in the "
                     f"{total_steps} training steps.")
  decay_type, linear_end = c.decay_type, c.get("linear_end", 0.0)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    if decay_type == "cosine":
      mult = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif decay_type == "linear":
      mult = 1.0 - (1.0 - linear_end) * progress
    elif decay_type == "quadratic":
      mult = jnp.square(1.0 - progress)
    else:
      mult = jnp.ones_like(progress)
    if warmup_steps:
      mult = mult * jnp.minimum(1.0, step / warmup_steps)
    return mult

  return schedule


def direction(c: mlc.ConfigDict, params: Any) -> optax.GradientTransformation:
  """The update direction `config.optim.name` (before the learning rate)."""
  mu_dtype = c.mu_dtype or None
  adam = lambda: optax.scale_by_adam(c.b1, c.b2, c.eps, mu_dtype=mu_dtype)
  if c.name == "adam":
    return adam()
  if c.name == "sgd":
    return optax.trace(decay=c.momentum, nesterov=c.nesterov, accumulator_dtype=mu_dtype)
  if c.name == "shampoo":
    if c.shampoo_graft not in shampoo.GRAFTS:
      raise ConfigError(f"config.optim.shampoo_graft={c.shampoo_graft!r}: must be one of "
                        f"{shampoo.GRAFTS} ('sgd' is the paper's, 'adam' keeps Adam's lr).")
    # Adam's b2 and eps are the Adam graft's; shampoo_b2 is the statistics'.
    return shampoo.scale_by_shampoo(
        block_size=c.shampoo_block_size, precond_every=c.shampoo_precond_every,
        b2=c.shampoo_b2, eps=c.shampoo_eps,
        start_preconditioning=c.shampoo_start_preconditioning, graft=c.shampoo_graft,
        nesterov=c.shampoo_nesterov, graft_per_block=c.shampoo_graft_per_block,
        b1=c.b1, graft_b2=c.b2, graft_eps=c.eps, mu_dtype=mu_dtype)
  if c.name == "muon":
    labels = jax.tree.map(lambda m: "muon" if m else "adam", muon_mask(params))
    return optax.partition({
        "muon": optax.chain(
            scale_by_muon(beta=c.muon_beta, mu_dtype=mu_dtype,
                          weight_dimension_numbers=_muon_dims),
            _scale_muon(c.muon_consistent_rms)),
        "adam": optax.chain(adam(), optax.scale(c.muon_adam_lr_ratio)),
    }, labels)
  raise ValueError(f"Unknown optimizer config.optim.name={c.name!r}; known: "
                   f"{', '.join(DIRECTIONS)}.")


# ---- Which parameters get what ---------------------------------------------

def _names(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def kernel_mask(params: Any) -> Any:
  """True for parameters whose path ends in 'kernel' (the weight-decayed ones)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: _names(path)[-1:] == ["kernel"],
                                          params)


def muon_mask(params: Any) -> Any:
  """True where Muon applies: kernels with 2+ axes outside the head.

  The rest (biases, GroupNorm, and the classifier head, whose output axis is
  the classes rather than features) gets Adam, as in Keller Jordan's recipe.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, p: (_names(path)[-1:] == ["kernel"] and len(p.shape) >= 2
                       and "head" not in _names(path)), params)


def _muon_dims(tree: Any) -> Any:
  # Conv kernels are HWIO: (H, W, I) is the input (reduction) side, O the output,
  # so a kernel is orthogonalized as the (H*W*I, O) matrix it multiplies by.
  return jax.tree.map(lambda x: MuonDimensionNumbers(tuple(range(x.ndim - 1)), x.ndim - 1),
                      tree)


def _scale_muon(consistent_rms: float | None) -> optax.GradientTransformation:
  """Scales each orthogonalized (fan_in, fan_out) update.

  With `consistent_rms` (Liu et al. 2025), to that root-mean-square (an
  orthogonal matrix has RMS 1/sqrt(max(fan_in, fan_out))), so an Adam
  learning rate carries over (0.2 matches Adam's typical update RMS). None:
  Keller Jordan's `sqrt(max(1, fan_out / fan_in))`, which needs a larger lr.
  """
  def scale(x):
    fan_in, fan_out = math.prod(x.shape[:-1]), x.shape[-1]
    if consistent_rms is None:
      return x * math.sqrt(max(1.0, fan_out / fan_in))
    return x * (consistent_rms * math.sqrt(max(fan_in, fan_out)))
  return optax.stateless(lambda updates, params: jax.tree.map(scale, updates))


# ---- Logging ---------------------------------------------------------------

def norms(tree: Any) -> jax.Array:
  """Global L2 norm of a tree (gradients, parameters, updates), in float32."""
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves),
                      jnp.zeros([], jnp.float32)))
