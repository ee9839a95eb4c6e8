"""The device pipeline's views against the host pipeline's ops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from big_distill import errors
from big_distill.data import device
from big_distill.data import pp as pp_lib

H, W = 60, 80  # A non-square image: the width limit of the crop matters.


def _box_stats(boxes, h, w):
  boxes = np.asarray(boxes, np.float64)
  y, x, bh, bw = boxes.T
  return {"area": bh * bw / (h * w), "aspect": bw / bh,
          "cy": (y + bh / 2) / h, "cx": (x + bw / 2) / w,
          "full": ((bh == h) & (bw == w)).astype(np.float64)}


def _host_boxes(n, h, w, area_min, area_max):
  window = pp_lib._inception_window  # pylint: disable=protected-access
  out = []
  for i in range(n):
    begin, size = window(tf.constant([h, w, 3]), tf.constant([7, i], tf.int64),
                         area_min, area_max)
    out.append([int(begin[0]), int(begin[1]), int(size[0]), int(size[1])])
  return np.array(out)


@pytest.mark.parametrize("area_min,area_max", [(5, 100), (40, 100), (100, 100)])
def test_crop_statistics_match_the_host_op(area_min, area_max):
  n = 1500
  host = _box_stats(_host_boxes(n, H, W, area_min, area_max), H, W)
  dev_boxes = device.inception_boxes(jax.random.key(3), jnp.tile(jnp.array([[H, W]]), (n, 1)),
                                     area_min, area_max)
  dev = _box_stats(dev_boxes, H, W)
  b = np.asarray(dev_boxes)
  assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
  assert (b[:, 0] + b[:, 2] <= H).all() and (b[:, 1] + b[:, 3] <= W).all()
  for k in host:
    se = np.sqrt(host[k].var() / n + dev[k].var() / n) + 1e-9
    assert abs(host[k].mean() - dev[k].mean()) < 4.5 * se + 1e-6, (k, host[k].mean(), dev[k].mean())
    if host[k].std() > 1e-6:  # The spread too, not only the mean.
      assert abs(host[k].std() / dev[k].std() - 1) < 0.12, (k, host[k].std(), dev[k].std())
  if area_min == 100:  # Only the whole image has 100% of the area.
    assert dev["full"].mean() == 1 and host["full"].mean() == 1


def test_crop_and_resize_equals_tf_resize_of_the_crop():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (2, 30, 40, 3)).astype(np.uint8)
  padded = np.zeros((2, 36, 44, 3), np.uint8)  # Padding must never be read.
  padded[:, :30, :40] = image
  padded[:, 30:] = 255
  padded[:, :, 40:] = 255
  boxes = np.array([[3, 5, 17, 29], [0, 0, 30, 40]], np.int32)
  got = np.asarray(device.crop_and_resize(jnp.asarray(padded), jnp.asarray(boxes), 24))
  for i, (y, x, h, w) in enumerate(boxes):
    want = tf.image.resize(tf.cast(image[i, y:y + h, x:x + w], tf.float32), (24, 24),
                           "bilinear", antialias=False).numpy()
    np.testing.assert_allclose(got[i], want, atol=2e-3)


def test_batch_indices_are_a_permutation_per_epoch_and_deterministic():
  key = jax.random.key(0)
  n, B = 10, 4  # B does not divide n: batches straddle epochs.
  seq = np.concatenate([np.asarray(device.batch_indices(key, jnp.int32(s), B, n))
                        for s in range(10)])
  for e in range(4):
    assert sorted(seq[e * n:(e + 1) * n]) == list(range(n))
  assert not np.array_equal(seq[:n], seq[n:2 * n])  # A new order each epoch.
  again = np.asarray(device.batch_indices(key, jnp.int32(7), B, n))
  np.testing.assert_array_equal(again, seq[28:32])  # A function of (seed, step).
  big = np.asarray(device.batch_indices(key, jnp.int32(3), 25, n))  # B > n.
  assert len(big) == 25 and set(big) == set(range(n))


def test_batch_indices_do_not_overflow_in_long_runs():
  # Step 10M x batch 512 is past int32 as a global position g = step * B + i.
  key, step, B, n = jax.random.key(0), 10_000_000, 512, 1020
  idx = np.asarray(device.batch_indices(key, jnp.int32(step), B, n))
  g = step * B + np.arange(B)  # Python/numpy int64: the reference.
  perms = {e: np.asarray(jax.random.permutation(jax.random.fold_in(key, int(e)), n))
           for e in set(g // n)}
  np.testing.assert_array_equal(idx, [perms[e][k] for e, k in zip(g // n, g % n)])


def _data(n=6, h=20, w=24, fixed_res=None):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (n, h, w, 3)).astype(np.uint8)
  fixed = {} if fixed_res is None else {
      "t1": jnp.asarray(rng.uniform(0, 255, (n, fixed_res, fixed_res, 3)), jnp.float32)}
  return device.DeviceData(images=jnp.asarray(images),
                           hw=jnp.tile(jnp.array([[h, w]], jnp.int32), (n, 1)),
                           labels=jnp.arange(n, dtype=jnp.int32), fixed=fixed)


def _batch(data, views, res, step=0, flip=True):
  rv = device.RandomView(size=16, area_min=5, area_max=100, flip=flip)
  return device.make_batch(data, jnp.int32(step), seed=0, batch_size=4, views=views,
                           res=res, random_view=rv, value_range=(-1, 1, 0, 255))


def test_consistent_views_give_every_model_the_same_crop():
  b = _batch(_data(), "consistent", {"student": 16, "t1": 16})
  np.testing.assert_array_equal(b["image"]["student"], b["image"]["t1"])
  low = _batch(_data(), "consistent", {"student": 8, "t1": 16})  # The same crop, resized.
  want = jax.image.resize(b["image"]["t1"], (4, 8, 8, 3), "bilinear", antialias=True)
  np.testing.assert_allclose(low["image"]["student"], want, atol=1e-5)
  assert float(jnp.abs(b["image"]["t1"]).max()) <= 1.0 + 1e-6  # value_range applied.


def test_independent_views_differ_and_fixed_views_are_the_stored_ones():
  ind = _batch(_data(), "independent", {"student": 16, "t1": 16})
  assert float(jnp.abs(ind["image"]["student"] - ind["image"]["t1"]).mean()) > 0.05
  data = _data(fixed_res=16)
  fix = _batch(data, "fixed", {"student": 16, "t1": 16})
  idx = np.asarray(fix["label"])  # Labels are the example ids here.
  np.testing.assert_allclose(fix["image"]["t1"],
                             np.asarray(data.fixed["t1"])[idx] / 255 * 2 - 1, atol=1e-5)


def test_the_batch_is_a_function_of_seed_and_step():
  data = _data()
  a = _batch(data, "consistent", {"student": 16}, step=5)
  b = _batch(data, "consistent", {"student": 16}, step=5)
  c = _batch(data, "consistent", {"student": 16}, step=6)
  np.testing.assert_array_equal(a["image"]["student"], b["image"]["student"])
  assert not np.array_equal(a["image"]["student"], c["image"]["student"])


def test_unsupported_pp_strings_are_clear_errors():
  assert device.parse_random_view("inception_crop(128)|flip_lr") == device.RandomView(
      128, 5.0, 100.0, True)
  assert device.parse_random_view("inception_crop(32, area_min=40)").area_min == 40
  for bad in ("random_crop(32)|flip_lr", "inception_crop(32)|flip_lr|flip_lr",
              "inception_crop(32, antialias=True)"):
    with pytest.raises(errors.ConfigError, match="cache='device'"):
      device.parse_random_view(bad)
  assert device.parse_value_range("value_range(-1, 1)") == (-1, 1, 0, 255)
  with pytest.raises(errors.ConfigError, match="value_range"):
    device.parse_value_range("value_range(-1, 1)|onehot(10)")
