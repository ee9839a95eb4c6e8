"""Any data set by name: what configs/teachers/custom.py and configs/custom_r50.py read.

Everything about the data comes from its TFDS metadata (`tfds.builder(name,
data_dir=...).info`): the class count, the splits and their sizes, and the
image size (the features' shape, or the first training image's where the
images vary, as in folders prepared by `big_distill.data.prepare folder`).

Splits: training reads `train`; selection reads the data set's own
`validation` split if it has one, otherwise the last 10% of train (then
training reads the first 90%), which the log states; the final numbers are
read on `test` if there is one (else on validation).
"""

from __future__ import annotations

import dataclasses

from absl import logging
import ml_collections as mlc

from big_distill import config_lib
from big_distill import errors

# BiT-HyperRule (Kolesnikov et al. 2020, Section 3.3): the fine-tuning schedule
# by training-set size: (fewer than this many images, steps, warm-up, mixup p).
HYPERRULE = ((20_000, 500, 100, 0.0), (500_000, 10_000, 500, 0.1), (None, 20_000, 500, 0.1))
# Its resolution by image size: images under 96x96 px are resized to 160 and
# cropped to 128; larger ones resized to 512 and cropped to 480.
SMALL_IMAGE = 96


@dataclasses.dataclass(frozen=True)
class Data:
  """What a config needs to know of a prepared data set."""
  name: str
  data_dir: str | None
  num_classes: int
  train: str  # The training split (TFDS split string).
  train_size: int  # Its number of examples.
  val: str  # The split that selection reads.
  test: str  # The split of the final numbers.
  image_size: tuple[int, int]  # (height, width) of (the first) training image(s).


def _builder(name: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from big_distill.data import prepare  # pylint: disable=g-import-not-at-top
  where = data_dir or "TFDS' default data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  fix = (f"Prepare it first ({prepare.command(name, data_dir)}), or pass the data_dir "
         "where it was prepared: :data=NAME,data_dir=DIR.")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise errors.DataError(f"data={name}: no data set of that name is prepared in {where}. "
                           f"{fix}") from None
  if not builder.is_prepared():
    raise errors.DataError(f"data={name}: {name} is not prepared in {where}. {fix}")
  return builder


def data(name: str, data_dir: str | None) -> Data:
  """The data set `name` as prepared in `data_dir`, read from its metadata."""
  if not name:
    raise errors.ConfigError("data=NAME is required: the TFDS name of your data set, e.g. "
                             "--config=configs/custom_r50.py:data=my_data (a name given to "
                             "`python -m big_distill.data.prepare folder --name=`).")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _builder(name, data_dir)
  info = builder.info
  label = info.features["label"] if "label" in info.features else None
  if not isinstance(label, tfds.features.ClassLabel):
    raise errors.DataError(f"data={name}: it has no class label feature 'label'; these "
                           "configs train classifiers.")
  splits = {k: v.num_examples for k, v in info.splits.items()}
  if "train" not in splits:
    raise errors.DataError(f"data={name}: it has no 'train' split (its splits: "
                           f"{', '.join(splits)}); name the training folder train/.")
  if "validation" in splits:
    train, val = "train", "validation"
  else:
    train, val = "train[:90%]", "train[90%:]"
    # A warning, so that it shows: the config is read before absl sets up INFO logging.
    logging.warning("%s has no validation split: the last 10%% of train (%s) is held out for "
                    "selection; training reads %s.", name, val, train)
  test = "test" if "test" in splits else val
  image = info.features["image"].shape[:2]
  if None in image:  # Images of varying size: the first training image's.
    first = next(iter(builder.as_dataset(split="train[:1]", shuffle_files=False)))
    image = tuple(int(d) for d in first["image"].shape[:2])
  train_size = info.splits[train].num_examples
  return Data(name=name, data_dir=data_dir, num_classes=label.num_classes, train=train,
              train_size=train_size, val=val, test=test, image_size=tuple(image))


def data_config(d: Data, split: str) -> mlc.ConfigDict:
  c = config_lib.data_config()
  c.name, c.split, c.data_dir = d.name, split, d.data_dir
  return c


def hyperrule(train_size: int) -> tuple[int, int, float]:
  """BiT-HyperRule's (steps, warm-up steps, mixup p) for `train_size` images."""
  for below, total, warmup, mixup in HYPERRULE:
    if below is None or train_size < below:
      return total, warmup, mixup
  raise AssertionError("unreachable")


def hyperrule_res(image_size: tuple[int, int]) -> tuple[int, int]:
  """BiT-HyperRule's (resize, crop) for images of `image_size` (height, width)."""
  return (160, 128) if max(image_size) < SMALL_IMAGE else (512, 480)


def add_eval(c: mlc.ConfigDict, name: str, kind: str, d: Data, split: str, *, pp: str,
             log_steps: int | None = None, log_epochs: float | None = None) -> None:
  """`c.evals[name]`: an evaluator of `kind` on `split` of the data set."""
  ec = config_lib.eval_config()
  ec.type, ec.pp, ec.data = kind, pp, data_config(d, split)
  ec.log_steps, ec.log_epochs = log_steps, log_epochs
  c.evals[name] = ec
