"""TFDS data sets: start-up checks with the command that fixes them, sizes, raw reading."""

import numpy as np
import pytest

from big_distill import errors
from big_distill.data import datasets
from tests.conftest import FOLDER_CLASSES, FOLDER_NAME, FOLDER_SPLITS


def test_missing_data_set_says_how_to_prepare(small_config, tmp_path):
  config = small_config("fashion_mnist", str(tmp_path))
  with pytest.raises(datasets.DataNotPreparedError) as e:
    datasets.check_prepared(config.input.data)
  assert f"python -m big_distill.data.prepare fashion_mnist --data_dir={tmp_path}" in str(e.value)
  assert isinstance(e.value, errors.DataError) and isinstance(e.value, FileNotFoundError)
  config.input.data.name = "my_flowers"
  with pytest.raises(datasets.DataNotPreparedError,
                     match="prepare folder --path=YOUR_IMAGE_DIR --name=my_flowers"):
    datasets.check_prepared(config.input.data)
  config.input.data.name = ""
  with pytest.raises(errors.ConfigError, match="config.input.data.name"):
    datasets.check_prepared(config.input.data)


def test_bad_split_names_the_splits(small_config, folder_data_dir):
  config = small_config(FOLDER_NAME, folder_data_dir, split="tran")
  with pytest.raises(errors.ConfigError, match="Bad split 'tran'.*train"):
    datasets.check_prepared(config.input.data)


def test_sizes_and_classes(small_config, folder_data_dir):
  d = small_config(FOLDER_NAME, folder_data_dir, split="train[:10]").input.data
  builder = datasets.tfds_builder(d)
  assert datasets.num_examples(d) == datasets.split_size(builder, d) == 10
  assert datasets.num_classes(d) == len(FOLDER_CLASSES)


def test_read_split_keeps_images_encoded_and_in_order(small_config, folder_data_dir):
  d = small_config(FOLDER_NAME, folder_data_dir, split="test").input.data
  builder = datasets.tfds_builder(d)
  examples = list(datasets.read_split(builder, d).as_numpy_iterator())
  assert len(examples) == FOLDER_SPLITS["test"]
  assert set(examples[0]) == set(datasets.RAW_KEYS)
  assert all(isinstance(ex["image"], bytes) and ex["image"][:4] == b"\x89PNG" for ex in examples)
  # The same order on every read (no file shuffling without a seed).
  again = [ex["image"] for ex in datasets.read_split(builder, d).as_numpy_iterator()]
  assert again == [ex["image"] for ex in examples]


def test_balanced_subset_selects_the_first_of_each_class(small_config, fashion_data_dir):
  d = small_config("fashion_mnist", fashion_data_dir).input.data
  d.balanced_subset, d.classes = 30, (2, 4, 6)
  builder = datasets.tfds_builder(d)
  mask = datasets.subset_mask(builder, d)
  labels = np.concatenate([b for b in datasets.read_split(builder, d, keys=("label",))
                           .map(lambda ex: ex["label"]).batch(8192).as_numpy_iterator()])
  assert mask.shape == labels.shape and mask.sum() == 30
  for c in (2, 4, 6):  # The first 10 of each chosen class, no others.
    np.testing.assert_array_equal(np.flatnonzero(mask & (labels == c)),
                                  np.flatnonzero(labels == c)[:10])
  chosen = datasets.select_examples(datasets.read_split(builder, d, keys=("label",)), mask)
  assert [ex["label"] for ex in chosen.as_numpy_iterator()] == labels[mask].tolist()
  assert datasets.num_examples(d) == 30


def test_balanced_subset_errors(small_config, fashion_data_dir):
  d = small_config("fashion_mnist", fashion_data_dir).input.data
  d.balanced_subset = 1025
  with pytest.raises(errors.ConfigError, match="multiple of the number of classes"):
    datasets.check_prepared(d)
  d.balanced_subset, d.classes = 301, (1, 3, 5, 7, 9)
  with pytest.raises(errors.ConfigError,
                     match=r"multiple of the number of classes given in classes \(5\)"):
    datasets.check_prepared(d)
  d.balanced_subset, d.classes = 300, (1, 10)
  with pytest.raises(errors.ConfigError, match=r"distinct label ids in 0..9"):
    datasets.check_prepared(d)
  d.balanced_subset, d.classes = None, (1, 3)
  with pytest.raises(errors.ConfigError, match="set balanced_subset too"):
    datasets.check_prepared(d)
