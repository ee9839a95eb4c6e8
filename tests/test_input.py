"""Training and evaluation streams: reading, views, determinism, counting, errors."""

import itertools

import jax
import ml_collections as mlc
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from big_distill import errors
from big_distill.data import datasets
from big_distill.data import input as input_lib
from big_distill.data import throughput
from tests.conftest import FOLDER_NAME, FOLDER_SPLITS, folder_image_id


def batches(ds, n):
  return list(itertools.islice(ds.as_numpy_iterator(), n))


def ids(batch, model="student"):
  return folder_image_id(batch["image"][model][:, 0, 0, 0])


def assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


# ---- Reading real TFDS builders (mocked) -----------------------------------


@pytest.mark.parametrize("name, split, cache", [
    ("oxford_flowers102", "train", "none"),
    ("oxford_iiit_pet", "train[:90%]", "decoded"),
    ("imagenet2012", "train", "encoded"),
])
def test_reads_tfds_builders(small_config, name, split, cache):
  config = small_config(name, "gs://bucket/tfds", split=split, cache=cache)
  with tfds.testing.mock_data(num_examples=12):
    batch = batches(input_lib.make_train_dataset(config), 1)[0]
  assert sorted(batch) == ["image", "label"]
  assert batch["image"]["student"].shape == (6, 16, 16, 3)
  assert batch["image"]["t1"].shape == (6, 32, 32, 3)
  assert batch["image"]["t1"].dtype == np.float32 and batch["label"].dtype == np.int32


def test_supervised_run_has_only_the_student(small_config, folder_data_dir):
  config = small_config(FOLDER_NAME, folder_data_dir)
  config.teachers = ()
  assert list(batches(input_lib.make_train_dataset(config), 1)[0]["image"]) == ["student"]


# ---- Views -----------------------------------------------------------------


def _view_distance(config):
  """Mean |teacher - student resized to the teacher's res| over channels 1, 2."""
  batch = batches(input_lib.make_train_dataset(config), 1)[0]
  student = tf.image.resize(batch["image"]["student"], (32, 32)).numpy()
  return np.abs(student - batch["image"]["t1"])[..., 1:].mean() / 255


def test_consistent_views_are_one_crop(small_config, folder_data_dir):
  config = small_config(FOLDER_NAME, folder_data_dir)
  assert _view_distance(config) < 0.03
  config.distill.views = "independent"
  assert _view_distance(config) > 0.08


@pytest.mark.parametrize("cache", ["encoded", "decoded"])
def test_fixed_views(small_config, folder_data_dir, cache):
  config = small_config(FOLDER_NAME, folder_data_dir, cache=cache)
  config.distill.views = "fixed"
  a = batches(input_lib.make_train_dataset(config), 1)[0]
  config.seed = 1
  b = batches(input_lib.make_train_dataset(config), 1)[0]
  by_id = lambda batch, m: dict(zip(ids(batch, m), batch["image"][m]))
  ta, tb = by_id(a, "t1"), by_id(b, "t1")
  common = set(ta) & set(tb)
  assert common  # The teacher's view is a function of the example only...
  for i in common:
    np.testing.assert_array_equal(ta[i], tb[i])
  sa, sb = by_id(a, "student"), by_id(b, "student")  # ...the student's is not.
  assert any(not np.allclose(sa[i], sb[i]) for i in common)


# ---- Determinism -----------------------------------------------------------


@pytest.mark.parametrize("cache", ["none", "encoded", "decoded"])
def test_stream_is_a_function_of_seed_and_step(small_config, folder_data_dir, cache):
  config = small_config(FOLDER_NAME, folder_data_dir, cache=cache)
  run = batches(input_lib.make_train_dataset(config), 12)  # 3 epochs of 24.
  assert_same(run, batches(input_lib.make_train_dataset(config), 12))
  for start in (5, 9):  # Inside an epoch, and at another epoch's start.
    assert_same(run[start:], batches(input_lib.make_train_dataset(config, start_step=start),
                                     12 - start))
  epochs = [np.sort(np.concatenate([ids(b) for b in run[e * 4:(e + 1) * 4]]))
            for e in range(3)]
  for e in epochs:  # Each epoch sees every example once...
    np.testing.assert_array_equal(e, np.arange(24))
  order = [np.concatenate([ids(b) for b in run[e * 4:(e + 1) * 4]]) for e in range(2)]
  assert not np.array_equal(*order)  # ...in a new order.
  config.seed = 1
  assert not np.array_equal(ids(run[0]), ids(batches(input_lib.make_train_dataset(config), 1)[0]))


def test_streamed_processes_read_disjoint_shares(small_config, folder_data_dir):
  config = small_config(FOLDER_NAME, folder_data_dir)
  seen = [np.concatenate([ids(b) for b in batches(
      input_lib.make_train_dataset(config, process_index=p, process_count=2), 4)])
          for p in range(2)]
  assert not set(seen[0]) & set(seen[1])
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(24))


@pytest.mark.parametrize("cache", ["encoded", "decoded"])
def test_cached_stream_is_global(small_config, folder_data_dir, cache):
  """With a cache, any number of processes sees the same global batches."""
  config = small_config(FOLDER_NAME, folder_data_dir, cache=cache)
  one = batches(input_lib.make_train_dataset(config, start_step=3), 2)
  for count in (2, 3):
    parts = [batches(input_lib.make_train_dataset(
        config, start_step=3, process_index=p, process_count=count), 2)
             for p in range(count)]
    for step in range(2):
      assert_same(one[step], jax.tree.map(lambda *x: np.concatenate(x),
                                          *[part[step] for part in parts]))


def test_decoded_cache_gives_the_encoded_cache_s_batches(small_config, folder_data_dir):
  """Decoding once instead of every step changes nothing (a deterministic pp)."""
  config = small_config(FOLDER_NAME, folder_data_dir, cache="encoded", pp="decode")
  encoded = batches(input_lib.make_train_dataset(config, start_step=2), 3)
  config.input.cache = "decoded"
  decoded = input_lib.decode_training_set(config)
  assert decoded.num_examples == 24 and decoded.channels == 3
  np.testing.assert_array_equal(decoded.hw, np.tile([[48, 40]], (24, 1)))
  assert_same(encoded, batches(input_lib.make_train_dataset(
      config, start_step=2, decoded=decoded), 3))


def test_decoded_cache_refuses_a_random_pp(small_config, folder_data_dir):
  config = small_config(FOLDER_NAME, folder_data_dir, cache="decoded",
                        pp="decode|flip_lr")
  with pytest.raises(errors.ConfigError, match="random ops.*flip_lr.*pp_random"):
    input_lib.make_train_dataset(config)
  config.input.cache = "disk"
  with pytest.raises(errors.ConfigError, match="config.input.cache='disk'"):
    input_lib.make_train_dataset(config)


# ---- Balanced subset -------------------------------------------------------


def test_balanced_subset_fashion_mnist(small_config, fashion_data_dir):
  config = small_config("fashion_mnist", fashion_data_dir, cache="encoded",
                        batch_size=60, pp="decode|resize(32)|grayscale_to_rgb")
  config.input.data.balanced_subset = 1020
  assert datasets.num_examples(config.input.data) == 1020
  labels = np.concatenate([b["label"] for b in batches(
      input_lib.make_train_dataset(config), 17)])  # One epoch.
  np.testing.assert_array_equal(np.bincount(labels), [102] * 10)


def test_balanced_subset_of_some_classes(small_config, fashion_data_dir):
  config = small_config("fashion_mnist", fashion_data_dir, cache="encoded",
                        batch_size=60, pp="decode|resize(32)|grayscale_to_rgb")
  d = config.input.data
  d.balanced_subset, d.classes = 300, (1, 3, 5, 7, 9)
  assert datasets.num_examples(d) == 300
  labels = np.concatenate([b["label"] for b in batches(
      input_lib.make_train_dataset(config), 5)])  # One epoch.
  np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                [0, 60, 0, 60, 0, 60, 0, 60, 0, 60])


# ---- Evaluation ------------------------------------------------------------


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_counts_every_example_once(small_config, folder_data_dir, process_count):
  config = small_config(FOLDER_NAME, folder_data_dir)
  config.evals.val = mlc.ConfigDict(dict(
      data=dict(name=FOLDER_NAME, split="test", data_dir=folder_data_dir,
                balanced_subset=None),
      pp="decode|resize_small(36)|central_crop(32)", batch_size=6, cache_raw=True))
  seen, counts = [], set()
  for p in range(process_count):
    ds, num_batches = input_lib.make_eval_dataset(
        config, "val", process_index=p, process_count=process_count)
    out = list(ds.as_numpy_iterator())
    assert_same(out, list(ds.as_numpy_iterator()))  # Re-iterable, deterministic.
    counts.add((num_batches, len(out)))
    for batch in out:
      assert batch["_mask"].shape == (6 // process_count,)
      assert batch["image"]["t1"].shape[1:] == (32, 32, 3)
      seen.extend(ids(batch)[batch["_mask"] == 1])
      assert (batch["image"]["student"][batch["_mask"] == 0] == 0).all()
  assert len(counts) == 1  # Every process yields the same number of batches.
  np.testing.assert_array_equal(np.sort(seen), np.arange(FOLDER_SPLITS["test"]))


# ---- Errors ----------------------------------------------------------------


def test_stream_of_a_missing_data_set_says_how_to_prepare(small_config, tmp_path):
  config = small_config("fashion_mnist", str(tmp_path))
  with pytest.raises(datasets.DataNotPreparedError, match="fashion_mnist --data_dir"):
    batches(input_lib.make_train_dataset(config), 1)


def test_config_errors_are_raised_at_start_up(small_config, folder_data_dir):
  config = small_config(FOLDER_NAME, folder_data_dir, pp_random="inception_crop(32)|flip")
  with pytest.raises(ValueError, match="Unknown pp op 'flip'.*flip_lr"):
    input_lib.make_train_dataset(config)
  config = small_config(FOLDER_NAME, folder_data_dir, pp="decode(1)")
  with pytest.raises(ValueError, match="grayscale_to_rgb"):
    input_lib.make_train_dataset(config)
  config = small_config(FOLDER_NAME, folder_data_dir)
  config.distill.views = "same"
  with pytest.raises(ValueError, match="views='same'"):
    input_lib.make_train_dataset(config)
  with pytest.raises(ValueError, match="divisible by the number of processes"):
    input_lib.make_train_dataset(small_config(FOLDER_NAME, folder_data_dir),
                                 process_index=0, process_count=4)


# ---- Devices and throughput ------------------------------------------------


def test_to_global(small_config, folder_data_dir):
  mesh = jax.make_mesh((1, 1), ("data", "fsdp"))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  ds = input_lib.make_train_dataset(small_config(FOLDER_NAME, folder_data_dir))
  local = batches(ds, 3)
  out = list(itertools.islice(input_lib.to_global(ds, sharding, prefetch=2), 3))
  assert isinstance(out[0]["image"]["t1"], jax.Array)
  assert out[0]["image"]["t1"].sharding == sharding
  assert_same(local, jax.tree.map(np.asarray, out))


def test_throughput_measure(small_config, folder_data_dir):
  assert throughput.measure(small_config(FOLDER_NAME, folder_data_dir), 2) > 0
