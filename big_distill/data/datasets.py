"""TFDS data sets: checks with the command that fixes them, sizes, and raw reading.

    datasets.check_prepared(config.input.data)    # at start-up: clear error + fix
    n = datasets.num_examples(config.input.data)  # for durations in epochs
    ds = datasets.read_split(datasets.tfds_builder(data), data)  # encoded examples

A data config is `config.input.data` or an evaluation's `data`: `name`,
`split` (TFDS slicing), `data_dir`, and optionally `balanced_subset` (the first
N/k examples of each of k classes) with `classes`. Everything here reads TFDS'
metadata or raw (still encoded) examples; the views, streams and batches built
from them are `input.py`'s.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_distill import errors
from big_distill.data import prepare

RAW_KEYS = ("image", "label")  # What is read from TFDS (and cached).


class DataNotPreparedError(errors.DataError, FileNotFoundError):
  """The data set is not in data_dir; the message says how to prepare it."""


def _data_dir_text(data_dir):
  return data_dir or "the TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets)"


def _not_prepared(data_config, why: str) -> DataNotPreparedError:
  name, data_dir = data_config.name, data_config.data_dir
  return DataNotPreparedError(
      f"Data set {name!r} is not prepared in data_dir {_data_dir_text(data_dir)}: "
      f"{why}. Prepare it with:\n  {prepare.command(name, data_dir)}\n"
      "or point config.input.data.data_dir (or the eval's data.data_dir) at "
      "the folder where it was prepared.")


def tfds_builder(data_config) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `data_config`, or an error that says how to prepare it."""
  if not data_config.name:
    raise errors.ConfigError("The data set name is empty: set config.input.data.name "
                     "(e.g. 'oxford_flowers102') or the eval's data.name.")
  try:
    return tfds.builder(data_config.name, data_dir=data_config.data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise _not_prepared(data_config, "it is neither a TFDS data set nor found "
                        "there") from None


def split_size(builder, data_config) -> int:
  """The number of examples of the (possibly sliced) split."""
  try:
    return builder.info.splits[data_config.split].num_examples
  except (KeyError, ValueError, AssertionError) as e:
    raise errors.ConfigError(
        f"Bad split {data_config.split!r} for data set {data_config.name!r} ({e}). "
        f"Its splits: {', '.join(builder.info.splits)}; slices look like "
        "'train[:90%]'.") from None


def _subset_sizes(builder, data_config) -> tuple[list[int], int]:
  """(the classes, examples per class) of `balanced_subset`, validated."""
  n = data_config.balanced_subset
  label = builder.info.features["label"] if "label" in builder.info.features else None
  if label is None or not hasattr(label, "num_classes"):
    raise errors.ConfigError(f"balanced_subset needs a ClassLabel 'label' in {data_config.name}.")
  k = label.num_classes
  classes = list(range(k))
  if data_config.get("classes") is not None:
    classes = list(data_config.classes)
    bad = [c for c in classes if not isinstance(c, int) or not 0 <= c < k]
    if bad or not classes or len(set(classes)) != len(classes):
      raise errors.ConfigError(
          f"classes={tuple(data_config.classes)} of {data_config.name}: give distinct label "
          f"ids in 0..{k - 1}, e.g. classes=(1, 3, 5).")
  if n <= 0 or n % len(classes):
    which = (f"the number of classes of {data_config.name} ({k})" if len(classes) == k else
             f"the number of classes given in classes ({len(classes)})")
    raise errors.ConfigError(f"balanced_subset={n} must be a positive multiple of {which}, "
                             f"e.g. {10 * len(classes)}.")
  return classes, n // len(classes)


def _check_subset(builder, data_config) -> None:
  """`classes` and `balanced_subset` are consistent and valid for this data set."""
  if data_config.get("classes") is not None and not data_config.balanced_subset:
    raise errors.ConfigError(
        f"classes={tuple(data_config.classes)} of {data_config.name} {data_config.split} "
        "selects a class-balanced subset: set balanced_subset too (the total number of "
        "examples, a multiple of the number of classes), or classes=None.")
  if data_config.balanced_subset:
    _subset_sizes(builder, data_config)


def check_prepared(data_config) -> None:
  """Raises a clear error (with the command that fixes it) if data is missing.

  Cheap: reads only metadata. Call it at start-up for every data config.
  """
  builder = tfds_builder(data_config)
  if not builder.is_prepared():
    raise _not_prepared(data_config, f"no data at {builder.data_dir}")
  split_size(builder, data_config)
  _check_subset(builder, data_config)


def num_examples(data_config) -> int:
  """The global number of examples after split slicing and balanced_subset."""
  builder = tfds_builder(data_config)
  _check_subset(builder, data_config)
  if data_config.balanced_subset:
    return data_config.balanced_subset
  return split_size(builder, data_config)


def num_classes(data_config) -> int | None:
  """The number of classes of the data set's `label` (None: it has no labels)."""
  features = tfds_builder(data_config).info.features
  label = features["label"] if "label" in features else None
  return label.num_classes if isinstance(label, tfds.features.ClassLabel) else None


# ---- Reading ---------------------------------------------------------------


def read_split(builder, data_config, split=None, *, shuffle_seed: int | None = None,
               keys: tuple[str, ...] = RAW_KEYS) -> tf.data.Dataset:
  """The raw examples {'image': encoded bytes, 'label'} of `split`, in order.

  `split` defaults to `data_config.split` (a process's share is passed here).

  With `shuffle_seed` the file order is shuffled once (the same every epoch,
  so that resuming does not depend on how often the data set was iterated).
  """
  features = builder.info.features
  keys = [k for k in keys if k in features]  # Other features are not parsed.
  decoders = tfds.decode.PartialDecoding(
      dict.fromkeys(keys, True),
      decoders={k: tfds.decode.SkipDecoding() for k in keys
                if isinstance(features[k], tfds.features.Image)})
  read_config = tfds.ReadConfig(
      shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=False,
      try_autocache=False, skip_prefetch=True)
  try:
    return builder.as_dataset(split=split or data_config.split, decoders=decoders,
                            shuffle_files=shuffle_seed is not None, read_config=read_config)
  except (AssertionError, FileNotFoundError) as e:
    raise _not_prepared(data_config, str(e).splitlines()[0]) from None


def subset_mask(builder, data_config) -> np.ndarray:
  """bool[split size]: the first N/len(classes) examples of each chosen class."""
  classes, per_class = _subset_sizes(builder, data_config)
  labels = read_split(builder, data_config, keys=("label",)).map(lambda ex: ex["label"])
  labels = labels.batch(8192)
  labels = np.concatenate(list(labels.as_numpy_iterator()))
  rank = np.zeros_like(labels)  # Position of each example within its class.
  for c in np.unique(labels):
    rank[labels == c] = np.arange((labels == c).sum())
  counts = np.bincount(labels, minlength=max(classes) + 1)[classes]
  if counts.min() < per_class:
    raise errors.ConfigError(f"balanced_subset={data_config.balanced_subset}: some class of "
                     f"{data_config.name} {data_config.split} has fewer than "
                     f"{per_class} examples (counts of classes {classes}: {counts.tolist()}).")
  return (rank < per_class) & np.isin(labels, classes)


def select_examples(ds: tf.data.Dataset, mask: np.ndarray) -> tf.data.Dataset:
  """The examples of `ds` (in order) whose position is True in `mask`."""
  mask = tf.constant(mask)

  def selected(i, ex):
    del ex
    return mask[i]

  def drop_index(i, ex):
    del i
    return ex
  return ds.enumerate().filter(selected).map(drop_index)
