"""Tests for big_distill.optim: directions, weight decay, schedule, clipping."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_distill import config_lib, optim
from big_distill.errors import ConfigError
from tests.helpers import conv_loss as _loss
from tests.helpers import conv_tree as _params

# config.optim fields that optim.py reads and config_lib.base() is to gain
# (with these defaults: today's Shampoo).
def base():
  return config_lib.base()


def _config(name="adam", **kw):
  c = base()
  c.optim.name = name
  c.optim.shampoo_block_size = 8
  c.optim.shampoo_precond_every = 2
  c.optim.shampoo_start_preconditioning = 2
  for k, v in kw.items():
    c[k] = v
  return c


def _train(tx, params, steps):
  @jax.jit
  def run(params):
    def body(carry, _):
      p, s = carry
      loss, g = jax.value_and_grad(_loss)(p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), loss
    (p, s), losses = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return p, s, losses
  return run(params)


# ---- Directions ------------------------------------------------------------

@pytest.mark.parametrize("name", optim.DIRECTIONS)
def test_each_optimizer_reduces_the_loss(name):
  # The same lr for all (SGD's steps are gradient-sized, hence 10x); measured
  # final/initial losses: adam 0.016, sgd 4e-5, muon 0.13, shampoo 0.005.
  c = _config(name, lr=0.1 if name != "sgd" else 1.0, wd=0.0)
  tx, _ = optim.make(c, _params(), total_steps=30, warmup_steps=3)
  _, _, losses = _train(tx, _params(), 30)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.5 * losses[0], losses


def test_first_moment_is_bfloat16():
  for name in ("adam", "sgd", "muon", "shampoo"):
    tx, _ = optim.make(_config(name), _params(), total_steps=10, warmup_steps=0)
    dtypes = {x.dtype for x in jax.tree.leaves(tx.init(_params()))}
    assert jnp.dtype(jnp.bfloat16) in dtypes, (name, dtypes)
  state = optax.tree_utils.tree_get(
      optim.make(_config("adam"), _params(), total_steps=10, warmup_steps=0)[0]
      .init(_params()), "mu")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state))


def test_muon_orthogonalizes_conv_kernels_as_matrices():
  c = _config("muon", lr=1.0, wd=0.0, grad_clip_norm=None)
  c.optim.muon_consistent_rms = None  # Keller Jordan's width scale: 1 here.
  assert optim.muon_mask(_params()) == {
      "conv": {"kernel": True}, "gn": {"scale": False, "bias": False},
      "head": {"kernel": False, "bias": False}}
  tx, _ = optim.make(c, _params(), total_steps=10, warmup_steps=0)
  g = jax.grad(_loss)(_params())
  u, _ = jax.jit(tx.update)(g, tx.init(_params()), _params())
  # The (H*W*I, O) = (18, 4) update has singular values near 1 (Newton-Schulz
  # only approximates the orthogonal factor), and descends.
  s = np.linalg.svd(np.asarray(u["conv"]["kernel"]).reshape(18, 4), compute_uv=False)
  assert np.all((s > 0.5) & (s < 1.5)), s
  assert float(jnp.vdot(u["conv"]["kernel"], g["conv"]["kernel"])) < 0
  # The head falls back to Adam: its first step is -sign(g).
  np.testing.assert_allclose(u["head"]["kernel"], -np.sign(g["head"]["kernel"]), rtol=1e-2)


def test_shampoo_fields_reach_the_transformation():
  # Before preconditioning starts the update is the graft's own, and with
  # b1 = 0 the momentum is the gradient: SGD's step is -lr * g, Adam's first
  # step -lr * sign(g).
  params = _params()
  g = jax.grad(_loss)(params)
  # (Adam's eps 1e-8 is not negligible against these small gradients: 1e-3.)
  for graft, want, rtol in (("sgd", jax.tree.map(lambda x: -x, g), 1e-5),
                            ("adam", jax.tree.map(lambda x: -jnp.sign(x), g), 1e-3)):
    c = _config("shampoo", lr=1.0, wd=0.0, grad_clip_norm=None)
    c.optim.b1, c.optim.shampoo_graft, c.optim.shampoo_nesterov = 0.0, graft, True
    c.optim.shampoo_start_preconditioning = 5
    tx, _ = optim.make(c, params, total_steps=10, warmup_steps=0)
    u, _ = jax.jit(tx.update)(g, tx.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-7), u, want)
  c.optim.shampoo_graft = "adagrad"
  with pytest.raises(ConfigError, match="config.optim.shampoo_graft='adagrad': must be one of"):
    optim.make(c, params, total_steps=10, warmup_steps=0)


def test_paper_shampoo_setting_trains():
  c = _config("shampoo", lr=1.0, wd=0.0)
  c.optim.update(optim.PAPER_SHAMPOO)
  c.schedule.decay_type = "quadratic"
  assert (c.optim.shampoo_block_size, c.optim.shampoo_precond_every, c.optim.b1,
          c.optim.shampoo_b2, c.optim.shampoo_start_preconditioning, c.optim.shampoo_graft,
          c.optim.shampoo_nesterov) == (128, 1, 0.95, 0.85, 25, "sgd", True)
  tx, _ = optim.make(c, _params(), total_steps=40, warmup_steps=3)
  _, state, losses = _train(tx, _params(), 40)
  shampoo_state = next(s for s in state if hasattr(s, "roots"))
  assert shampoo_state.nu is None  # SGD grafting keeps no second moment.
  # 15 preconditioned steps, roots recomputed at each: no longer the identity.
  assert not np.allclose(shampoo_state.roots["conv"]["kernel"].left, np.eye(18), atol=1e-3)
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses


def test_unknown_optimizer():
  with pytest.raises(ValueError, match="'adamw'; known: adam, sgd, muon, shampoo"):
    optim.make(_config("adamw"), _params(), total_steps=10, warmup_steps=0)


# ---- Weight decay ----------------------------------------------------------

def test_weight_decay_on_kernels_only_scaled_by_schedule_not_lr():
  c = _config("sgd", lr=0.5, wd=0.1, grad_clip_norm=None)
  c.optim.momentum = 0.0
  params = _params()
  tx, sched = optim.make(c, params, total_steps=10, warmup_steps=4)
  zeros = jax.tree.map(jnp.zeros_like, params)
  update = jax.jit(tx.update)
  state = tx.init(params)
  for step in range(3):
    u, state = update(zeros, state, params)
    m = float(sched(step))
    assert m == step / 4  # Warm-up: 0, 1/4, 1/2.
    # Zero gradient: the update is the decay alone, wd * schedule (no lr).
    np.testing.assert_allclose(u["conv"]["kernel"], -0.1 * m * params["conv"]["kernel"],
                               rtol=1e-6)
    np.testing.assert_allclose(u["head"]["kernel"], -0.1 * m * params["head"]["kernel"],
                               rtol=1e-6)
    for path in (("gn", "scale"), ("gn", "bias"), ("head", "bias")):
      np.testing.assert_array_equal(u[path[0]][path[1]], 0.0)
  assert optim.kernel_mask(params) == {
      "conv": {"kernel": True}, "gn": {"scale": False, "bias": False},
      "head": {"kernel": True, "bias": False}}


def test_learning_rate_scales_the_direction_with_schedule():
  c = _config("sgd", lr=0.5, wd=0.0, grad_clip_norm=None)
  c.optim.momentum = 0.0
  tx, sched = optim.make(c, _params(), total_steps=10, warmup_steps=4)
  g = jax.tree.map(jnp.ones_like, _params())
  update, state = jax.jit(tx.update), tx.init(_params())
  for step in range(3):
    u, state = update(g, state, _params())
    np.testing.assert_allclose(u["gn"]["bias"], -0.5 * step / 4, rtol=1e-6)


# ---- Schedule --------------------------------------------------------------

@pytest.mark.parametrize("decay_type,mid,end", [
    ("cosine", 0.5, 0.0), ("linear", 0.55, 0.1), ("constant", 1.0, 1.0),
    ("quadratic", 0.25, 0.0)])
def test_schedule_values(decay_type, mid, end):
  c = config_lib.base().schedule
  c.decay_type, c.linear_end = decay_type, 0.1
  s = optim.make_schedule(c, total_steps=110, warmup_steps=10)
  np.testing.assert_allclose(float(s(0)), 0.0)
  np.testing.assert_allclose(float(s(5)), 0.5)    # Half-way through warm-up.
  np.testing.assert_allclose(float(s(10)), 1.0)   # End of warm-up: the peak.
  np.testing.assert_allclose(float(s(60)), mid, rtol=1e-6)  # Half-way through decay.
  np.testing.assert_allclose(float(s(110)), end, atol=1e-7)
  np.testing.assert_allclose(float(s(500)), end, atol=1e-7)  # Stays there.
  if decay_type == "cosine":  # Quarter of the way: (1 + cos(pi/4)) / 2.
    np.testing.assert_allclose(float(s(35)), (1 + math.cos(math.pi / 4)) / 2, rtol=1e-6)
  if decay_type == "quadratic":  # Quarter of the way: (3/4)^2.
    np.testing.assert_allclose(float(s(35)), 0.5625, rtol=1e-6)
  values = np.asarray(jax.vmap(s)(jnp.arange(120)))
  assert values.min() >= 0.0 and values.max() <= 1.0


def test_schedule_without_warmup_and_errors():
  c = config_lib.base().schedule
  s = optim.make_schedule(c, total_steps=10, warmup_steps=0)
  assert float(s(0)) == 1.0
  with pytest.raises(ValueError, match="does not fit"):
    optim.make_schedule(c, total_steps=10, warmup_steps=11)
  c.decay_type = "rsqrt"
  with pytest.raises(ValueError, match="'rsqrt'; known: cosine, linear, constant"):
    optim.make_schedule(c, total_steps=10, warmup_steps=0)


# ---- Clipping and norms ----------------------------------------------------

def test_clipping_at_global_norm():
  c = _config("sgd", lr=1.0, wd=0.0, grad_clip_norm=1.0)
  c.optim.momentum = 0.0
  params = {"dense": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}}
  tx, _ = optim.make(c, params, total_steps=10, warmup_steps=0)
  big = {"dense": {"kernel": jnp.full((2, 2), 3.0), "bias": jnp.full((2,), 4.0)}}
  u, _ = tx.update(big, tx.init(params), params)
  np.testing.assert_allclose(float(optim.norms(u)), 1.0, rtol=1e-6)
  small = jax.tree.map(lambda x: x / 100, big)
  u, _ = tx.update(small, tx.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, -b, rtol=1e-6), u, small)
  c.grad_clip_norm = None
  tx, _ = optim.make(c, params, total_steps=10, warmup_steps=0)
  u, _ = tx.update(big, tx.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, -b), u, big)


def test_norms():
  tree = {"a": jnp.full((2, 2), 1.5, jnp.bfloat16), "b": jnp.array([2.0, 0.0])}
  n = optim.norms(tree)
  assert n.dtype == jnp.float32
  np.testing.assert_allclose(float(n), math.sqrt(4 * 2.25 + 4), rtol=1e-6)
