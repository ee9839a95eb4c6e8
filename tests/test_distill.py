"""Tests for big_distill.distill: hand-computed losses, distances, mixup."""

import math

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from big_distill import distill

LN3 = math.log(3.0)


# ---- Losses against numbers worked out by hand -----------------------------

def test_kl_by_hand():
  # Student uniform p = (1/2, 1/2); teacher q = softmax(ln3, 0) = (3/4, 1/4).
  # KL(q||p) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120...
  want = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
  s, t = jnp.array([[0.0, 0.0]]), jnp.array([[LN3, 0.0]])
  np.testing.assert_allclose(distill.get_loss("kl")(s, t), [want], rtol=1e-6)
  np.testing.assert_allclose(want, 0.130812, atol=1e-6)
  # At t=2 the teacher logits (2 ln3, 0) give the same q, so the loss is
  # t^2 = 4 times the above.
  got = distill.get_loss("kl", t=2.0)(s, 2 * t)
  np.testing.assert_allclose(got, [4 * want], rtol=1e-6)


def test_kl_zero_when_equal_and_shape_per_example():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 7)), jnp.float32)
  got = distill.kl(x, x, t=3.0)
  assert got.shape == (3,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, 0.0, atol=1e-6)


def test_euclidean_by_hand_not_squared():
  s = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
  t = jnp.array([[1.0, -2.0, 0.0], [0.0, 0.0, 0.0]])
  # Differences (0, 4, 3) and (0, 0, 0): norms 5 and 0.
  np.testing.assert_allclose(distill.get_loss("euclidean")(s, t), [5.0, 0.0])


def test_euclidean_gradient_finite_at_zero_and_teacher_frozen():
  x = jnp.array([[1.0, 2.0, 3.0]])
  for name in ("euclidean", "logsoftmax_euclidean"):
    g = jax.grad(lambda s: distill.get_loss(name)(s, x).sum())(x)
    np.testing.assert_array_equal(g, 0.0)
  for name in distill.LOSSES:
    gt = jax.grad(lambda t: distill.get_loss(name)(x + 1.0, t).sum())(x)
    np.testing.assert_array_equal(gt, 0.0)


def test_logsoftmax_euclidean_by_hand():
  # log_softmax(0, 0) = (-ln2, -ln2); log_softmax(ln3, 0) = (ln 3/4, ln 1/4).
  # Difference (ln 3/2, ln 1/2): norm sqrt(ln(1.5)^2 + ln(2)^2) = 0.803029...
  want = math.sqrt(math.log(1.5) ** 2 + math.log(2.0) ** 2)
  s, t = jnp.array([[0.0, 0.0]]), jnp.array([[LN3, 0.0]])
  np.testing.assert_allclose(distill.logsoftmax_euclidean(s, t), [want], rtol=1e-6)
  np.testing.assert_allclose(want, 0.803029, atol=1e-6)
  # Shifting the logits by a constant changes nothing.
  np.testing.assert_allclose(distill.logsoftmax_euclidean(t + 7.0, t), [0.0], atol=1e-6)


def test_hard_by_hand():
  # Teacher's top-1 is class 1; student probabilities (1/5, 3/5, 1/5).
  s, t = jnp.array([[0.0, LN3, 0.0]]), jnp.array([[0.0, 5.0, 1.0]])
  np.testing.assert_allclose(distill.get_loss("hard")(s, t), [-math.log(0.6)], rtol=1e-6)


def test_softmax_xent_and_entropy_by_hand():
  # -(1/2 ln 1/4 + 1/2 ln 3/4) = 0.8369882...
  got = distill.softmax_xent(jnp.array([[0.0, LN3]]), jnp.array([[0.5, 0.5]]))
  np.testing.assert_allclose(got, [0.5 * (math.log(4) + math.log(4 / 3))], rtol=1e-6)
  got = distill.entropy(jnp.array([[0.0, 0.0], [LN3, 0.0]]))
  want = [math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_get_loss_errors():
  with pytest.raises(ValueError, match="Unknown distillation loss 'kld'.*kl, euclidean"):
    distill.get_loss("kld")
  with pytest.raises(TypeError, match="'euclidean' takes no argument"):
    distill.get_loss("euclidean", t=2.0)
  with pytest.raises(TypeError, match=r"takes \['t'\]"):
    distill.get_loss("kl", temperature=2.0)


def test_from_config_passes_temperature_to_kl_only():
  s, t = jnp.array([[0.0, 0.0]]), jnp.array([[2 * LN3, 0.0]])
  c = mlc.ConfigDict(dict(loss="kl", t=2.0))
  np.testing.assert_allclose(distill.from_config(c)(s, t),
                             distill.kl(s, t, t=2.0), rtol=1e-6)
  c.loss = "euclidean"
  np.testing.assert_allclose(distill.from_config(c)(s, t), [2 * LN3], rtol=1e-6)


# ---- Distances -------------------------------------------------------------

def test_distances_by_hand():
  teacher = jnp.array([[0.0, 0.0, 9.0, 0.0, 0.0, 0.0],    # top-1: class 2
                       [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])   # top-1: class 5
  student = jnp.array([[0.0, 1.0, 5.0, 2.0, 3.0, 4.0],    # top-1 2: agree
                       [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])   # 5 is 6th: no top-5
  d = distill.distances(student, teacher)
  assert set(d) == {"kl", "euclidean", "agree_top1", "agree_top5"}
  np.testing.assert_array_equal(d["agree_top1"], [1.0, 0.0])
  np.testing.assert_array_equal(d["agree_top5"], [1.0, 0.0])
  np.testing.assert_allclose(d["euclidean"], np.linalg.norm(student - teacher, axis=-1),
                             rtol=1e-6)
  np.testing.assert_allclose(d["kl"], distill.kl(student, teacher), rtol=1e-6)
  # Teacher's class 4 is the student's 2nd: top-5 but not top-1.
  d = distill.distances(student[:1], jnp.array([[0.0, 0.0, 0.0, 0.0, 0.0, 9.0]]))
  np.testing.assert_array_equal([d["agree_top1"], d["agree_top5"]], [[0.0], [1.0]])


def test_distances_fewer_than_five_classes():
  d = distill.distances(jnp.array([[1.0, 0.0, 0.0]]), jnp.array([[0.0, 0.0, 1.0]]))
  np.testing.assert_array_equal(d["agree_top1"], [0.0])
  np.testing.assert_array_equal(d["agree_top5"], [1.0])  # All 3 classes are in it.


# ---- Mixup -----------------------------------------------------------------

def _batch(b=4):
  rng = np.random.default_rng(0)
  images = {"student": jnp.asarray(rng.normal(size=(b, 2, 2, 3)), jnp.float32),
            "t1": jnp.asarray(rng.normal(size=(b, 3, 3, 3)), jnp.float32)}
  labels = jnp.asarray(np.eye(5, dtype=np.float32)[rng.integers(0, 5, size=b)])
  return images, labels


def test_mixup_shares_coefficient_and_partner():
  images, labels = _batch()
  mixed, mixed_labels, a = jax.jit(distill.mixup, static_argnums=1)(
      jax.random.key(1), 1.0, images, labels)
  assert 0.5 <= float(a) <= 1.0
  for x, y in [(images["student"], mixed["student"]), (images["t1"], mixed["t1"]),
               (labels, mixed_labels)]:
    assert y.shape == x.shape and y.dtype == x.dtype
    # Example i is mixed with example i-1 (the batch rolled by one).
    x, a_ = np.asarray(x), float(a)
    want = a_ * x + (1 - a_) * np.concatenate([x[-1:], x[:-1]])
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(mixed_labels.sum(-1), 1.0, rtol=1e-6)


def test_mixup_coefficient_is_max_of_beta_pair():
  x = jnp.zeros((2, 1))
  a = jax.jit(jax.vmap(lambda k: distill.mixup(k, 1.0, x)[-1]))(
      jax.random.split(jax.random.key(0), 4000))
  assert float(a.min()) >= 0.5 and float(a.max()) <= 1.0
  # Beta(1, 1) is uniform, so max(a, 1-a) is uniform on [1/2, 1]: mean 3/4.
  np.testing.assert_allclose(float(a.mean()), 0.75, atol=0.01)


@pytest.mark.parametrize("p", [0, 0.0, None])
def test_mixup_off_is_identity(p):
  images, labels = _batch()
  mixed, mixed_labels, a = distill.mixup(jax.random.key(1), p, images, labels)
  assert float(a) == 1.0
  assert mixed is images and mixed_labels is labels


def test_mixup_rejects_integer_labels():
  with pytest.raises(TypeError, match="one_hot"):
    distill.mixup(jax.random.key(0), 1.0, jnp.zeros((2,), jnp.int32))
