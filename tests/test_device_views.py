"""The device pipeline's views against the host pipeline's ops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from big_distill import errors
from big_distill.data import device
from big_distill.data import pp as pp_lib
from big_distill.data import views

H, W = 60, 80  # A non-square image: the width limit of the crop matters.


def _box_stats(boxes, h, w):
  boxes = np.asarray(boxes, np.float64)
  y, x, bh, bw = boxes.T
  return {"area": bh * bw / (h * w), "aspect": bw / bh,
          "cy": (y + bh / 2) / h, "cx": (x + bw / 2) / w,
          "full": ((bh == h) & (bw == w)).astype(np.float64)}


def _tf_op_boxes(n, h, w, area_min, area_max):
  """Boxes of tf.image's own sampler, the reference that views.inception_box follows."""
  out = []
  for i in range(n):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.constant([h, w, 3]), tf.zeros([0, 0, 4], tf.float32), seed=tf.constant([7, i], tf.int64),
        area_range=(area_min / 100, area_max / 100), aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0, use_image_if_no_bounding_boxes=True)
    out.append([int(begin[0]), int(begin[1]), int(size[0]), int(size[1])])
  return np.array(out)


def _host_boxes(n, h, w, area_min, area_max):
  """Boxes of the host's inception_crop op (pp.inception_window)."""
  return np.stack([pp_lib.inception_window(tf.constant([h, w, 3]), tf.constant([7, i], tf.int64),
                                           area_min, area_max).numpy() for i in range(n)])


@pytest.mark.parametrize("area_min,area_max", [(5, 100), (40, 100), (100, 100)])
def test_crop_statistics_match_tf_sample_distorted_bounding_box(area_min, area_max):
  # The one crop function (views.inception_box, drawn here with JAX's uniforms)
  # has the distribution of the TF op that the host pipeline used to call.
  n = 1500
  host = _box_stats(_tf_op_boxes(n, H, W, area_min, area_max), H, W)
  dev_boxes = device.inception_boxes(jax.random.key(3), jnp.tile(jnp.array([[H, W]]), (n, 1)),
                                     area_min, area_max)
  dev = _box_stats(dev_boxes, H, W)
  b = np.asarray(dev_boxes)
  assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
  assert (b[:, 0] + b[:, 2] <= H).all() and (b[:, 1] + b[:, 3] <= W).all()
  for k in host:
    se = np.sqrt(host[k].var() / n + dev[k].var() / n) + 1e-9
    assert abs(host[k].mean() - dev[k].mean()) < 4.5 * se + 1e-6, (k, host[k].mean(), dev[k].mean())
    # The spread too, not only the mean. ("full" is 0/1: its spread is a
    # function of its mean, checked above with its standard error; the ratio of
    # two spreads of a rare 0/1 event, 1 or 2 in 1500, is noise.)
    if host[k].std() > 1e-6 and k != "full":
      assert abs(host[k].std() / dev[k].std() - 1) < 0.12, (k, host[k].std(), dev[k].std())
  if area_min == 100:  # Only the whole image has 100% of the area.
    assert dev["full"].mean() == 1 and host["full"].mean() == 1


def test_host_op_boxes_follow_the_same_distribution():
  n = 1500
  host = _box_stats(_host_boxes(n, H, W, 5, 100), H, W)
  ref = _box_stats(_tf_op_boxes(n, H, W, 5, 100), H, W)
  for k in host:
    se = np.sqrt(host[k].var() / n + ref[k].var() / n) + 1e-9
    assert abs(host[k].mean() - ref[k].mean()) < 4.5 * se + 1e-6, (k, host[k].mean(), ref[k].mean())


@pytest.mark.parametrize("area_min,area_max", [(5, 100), (40, 60), (100, 100)])
def test_host_and_device_compute_the_same_box_from_the_same_uniforms(area_min, area_max):
  # One definition: views.inception_box run by TF (the host op) and by JAX
  # (the device) gives the same integer box for the same random numbers.
  rng = np.random.default_rng(area_min)
  n = 400
  u = rng.uniform(0, 1, (n, views.num_uniforms())).astype(np.float32)
  hw = np.stack([rng.integers(1, 90, n), rng.integers(1, 90, n)], 1).astype(np.int32)
  hw[:4] = [[28, 28], [32, 32], [60, 80], [1, 1]]
  tf_box = np.stack([b.numpy() for b in views.inception_box(
      pp_lib.TF_OPS, tf.constant(u), tf.constant(hw[:, 0]), tf.constant(hw[:, 1]),
      area_min, area_max)], 1)
  jnp_box = np.asarray(device.inception_boxes_from_uniforms(jnp.asarray(u), jnp.asarray(hw),
                                                            area_min, area_max))
  np.testing.assert_array_equal(tf_box, jnp_box)
  y, x, h, w = jnp_box.T
  assert (y >= 0).all() and (x >= 0).all() and (h >= 1).all() and (w >= 1).all()
  assert (y + h <= hw[:, 0]).all() and (x + w <= hw[:, 1]).all()
  # One image, one box: the host op's window is the same function of its uniforms.
  one = pp_lib.inception_window(tf.constant([60, 80, 3]), tf.constant([1, 2], tf.int64),
                                area_min, area_max).numpy()
  u1 = tf.random.stateless_uniform([views.num_uniforms()], tf.constant([1, 2], tf.int64))
  want = device.inception_boxes_from_uniforms(jnp.asarray(u1.numpy())[None],
                                              jnp.array([[60, 80]]), area_min, area_max)
  np.testing.assert_array_equal(one, np.asarray(want)[0])


def _padded_images(n):
  """uint8 images [n, 30, 40, 3], and them padded to 36x44 with 255 (never to be read)."""
  image = np.random.default_rng(0).integers(0, 256, (n, 30, 40, 3)).astype(np.uint8)
  padded = np.full((n, 36, 44, 3), 255, np.uint8)
  padded[:, :30, :40] = image
  return image, padded


def test_host_and_device_views_have_the_same_pixels_for_the_same_box_and_flip():
  # Pixels in grey levels of the uint8 image, range [0, 255]: the host's view
  # (pp's inception_crop: crop, bilinear resize, rounded to uint8; then flip_lr)
  # and the device's (crop_view) differ by at most one grey level (rounding
  # ties of float sums), and so by at most 2/255 after value_range(-1, 1).
  image, padded = _padded_images(5)
  boxes = np.array([[3, 5, 17, 29], [0, 0, 30, 40], [10, 20, 5, 6], [29, 39, 1, 1],
                    [2, 1, 27, 12]], np.int32)
  flips = np.array([False, True, True, False, True])
  for size in (24, 4, 48):  # Down, far down and up.
    got = np.asarray(device.crop_view(jnp.asarray(padded), jnp.asarray(boxes), size,
                                      jnp.asarray(flips)))
    for i, box in enumerate(boxes):
      want = pp_lib.crop_and_resize(tf.constant(image[i]), tf.constant(box), size)
      assert want.dtype == tf.uint8
      if flips[i]:
        want = tf.image.flip_left_right(want)
      want = want.numpy().astype(np.float32)
      assert np.abs(got[i] - want).max() <= 1, (size, i, np.abs(got[i] - want).max())
      post = lambda x: np.asarray(views.value_range(x, -1, 1, 0, 255))
      assert np.abs(post(got[i]) - post(want)).max() <= 2 / 255 + 1e-6
      np.testing.assert_array_equal(got[i], np.round(got[i]))  # Whole grey levels.


def test_resize_to_a_model_equals_the_host_resize():
  # The view resized to another model's resolution: the device's resize_to
  # against the host's (_to_model: tf.image.resize, bilinear, antialiased).
  x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
  for res in (24, 16, 48):
    want = tf.image.resize(x, (res, res), antialias=True).numpy()
    got = np.asarray(device.resize_to(jnp.asarray(x), res))
    np.testing.assert_allclose(got, want, atol=1e-3)  # Grey levels, range [0, 255].
  np.testing.assert_array_equal(device.resize_to(jnp.asarray(x), 32), x)  # Same size: as is.


def test_crop_and_resize_equals_tf_resize_of_the_crop():
  image, padded = _padded_images(2)
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
