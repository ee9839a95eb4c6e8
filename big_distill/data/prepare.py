"""Offline preparation of data sets, so that training reads them by TFDS name.

    # Fashion-MNIST from the Debian package dataset-fashion-mnist (no internet):
    python -m big_distill.data.prepare fashion_mnist [--data_dir=DIR]

    # scikit-learn's handwritten digits (1,797 8x8 images shipped inside
    # scikit-learn: pip install 'big_distill[data]'), as TFDS 'sklearn_digits':
    python -m big_distill.data.prepare digits [--data_dir=DIR]

    # Your own images, DIR/<split>/<class_name>/*.jpg (or .jpeg, .png):
    python -m big_distill.data.prepare folder --path=DIR --name=my_data [--data_dir=DIR]

    # Any other TFDS data set, with TFDS' own download (needs internet; data
    # sets like imagenet2012 need --manual_dir with the files you downloaded):
    python -m big_distill.data.prepare oxford_flowers102 [--data_dir=DIR]

Every result is an ordinary TFDS data set under `data_dir` (TFDS' default when
omitted: $TFDS_DATA_DIR or ~/tensorflow_datasets), read in a config with

    config.input.data.name = "my_data"        # or "fashion_mnist"
    config.input.data.split = "train"         # the folder's split names
    config.input.data.data_dir = "DIR"        # the same --data_dir

Fashion-MNIST: the Debian package holds the four .gz files TFDS would fetch
(recompressed, so their checksums differ from the ones TFDS registers, and
TFDS' download would refuse them). They are read here, and written as TFDS'
`fashion_mnist` (its registered name, version and features; the examples
keyed as TFDS' builder keys them, so in the same order) with TFDS' public
`AdhocBuilder`.

Digits (`sklearn_digits`): the images of `sklearn.datasets.load_digits`, a
copy of the UCI optical-recognition test set, as one split 'train' of 1,797
examples in scikit-learn's order (slice it, e.g. 'train[:1500]', for held-out
parts): "image" uint8 8x8x1, the 17 grey levels 0..16 scaled to 0..255;
"label" the digit 0..9. Offline images of another domain than Fashion-MNIST,
to distil a Fashion-MNIST teacher on (paper Section 3.8).
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import re
import shutil
import subprocess
import sys

import tensorflow_datasets as tfds

from big_distill import errors

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
DIGITS_NAME = "sklearn_digits"
_MODULE = "python -m big_distill.data.prepare"


def command(name: str, data_dir: str | None = None) -> str:
  """The exact command that prepares the data set `name` in `data_dir`."""
  dd = f" --data_dir={data_dir}" if data_dir else ""
  if name == "fashion_mnist":
    return f"{_MODULE} fashion_mnist{dd}"
  if name == DIGITS_NAME:
    return f"{_MODULE} digits{dd}"
  if name in tfds.list_builders(with_community_datasets=False):
    return f"{_MODULE} {name}{dd}   (add --manual_dir=DIR if TFDS asks for manual files)"
  return f"{_MODULE} folder --path=YOUR_IMAGE_DIR --name={name}{dd}"


def _build(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """Writes `builder`'s data set from the examples it holds: nothing to download."""
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def _read_idx(path: str, header_ints: int, shape: tuple[int, ...]) -> "np.ndarray":
  """The uint8 array of a gzipped IDX file (MNIST's format: big-endian int32 header)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  with gzip.open(path) as f:
    header = np.frombuffer(f.read(4 * header_ints), ">i4")
    data = np.frombuffer(f.read(), np.uint8)
  n = int(header[1])
  if data.size != n * math.prod(shape):
    raise ValueError(f"{path}: {data.size} bytes of data, expected {n} x {shape}.")
  return data.reshape(n, *shape)


def _fashion_mnist_split(src_dir: str, prefix: str) -> list[tuple[int, dict]]:
  """The examples of one split, keyed by their index in the files, as TFDS keys them."""
  images = _read_idx(os.path.join(src_dir, f"{prefix}-images-idx3-ubyte.gz"), 4, (28, 28, 1))
  labels = _read_idx(os.path.join(src_dir, f"{prefix}-labels-idx1-ubyte.gz"), 2, ())
  if len(images) != len(labels):
    raise ValueError(f"{src_dir}: {len(images)} {prefix} images but {len(labels)} labels.")
  return [(i, {"image": image, "label": int(label)})
          for i, (image, label) in enumerate(zip(images, labels))]


def _ensure_fashion_mnist_files(src_dir: str) -> None:
  """Installs the Debian package if its files are missing and we are root."""
  missing = [f for f in FASHION_MNIST_FILES if not os.path.exists(os.path.join(src_dir, f))]
  if not missing:
    return
  install = f"apt-get update && apt-get install -y {FASHION_MNIST_PACKAGE}"
  if src_dir == FASHION_MNIST_DIR and os.geteuid() == 0 and shutil.which("apt-get"):
    print(f"Fashion-MNIST files missing in {src_dir}; running: {install}", flush=True)
    if subprocess.run(["apt-get", "install", "-y", FASHION_MNIST_PACKAGE]).returncode:
      subprocess.run(["apt-get", "update"], check=False)
      subprocess.run(["apt-get", "install", "-y", FASHION_MNIST_PACKAGE], check=False)
    if all(os.path.exists(os.path.join(src_dir, f)) for f in FASHION_MNIST_FILES):
      return
  raise FileNotFoundError(
      f"Fashion-MNIST files {missing} are not in {src_dir}. They come with the "
      f"Debian package {FASHION_MNIST_PACKAGE}; install it as root with\n"
      f"  sudo sh -c '{install}'\nthen run again: {_MODULE} fashion_mnist")


def prepare_fashion_mnist(data_dir: str | None = None, *,
                          src_dir: str = FASHION_MNIST_DIR) -> tfds.core.DatasetBuilder:
  """Writes TFDS' fashion_mnist to `data_dir` from the Debian package's files.

  The data set is TFDS' own: its name, version and features (read from TFDS'
  registered builder), its splits, and its examples keyed by their index in
  the files, so that TFDS orders them as its own download would. It is read
  back with `tfds.builder("fashion_mnist", data_dir=...)`.
  """
  registered = tfds.builder("fashion_mnist", data_dir=data_dir)
  if registered.is_prepared():
    print(f"fashion_mnist is already prepared in {registered.data_dir}.")
    return registered
  _ensure_fashion_mnist_files(src_dir)
  info = registered.info
  _build(tfds.dataset_builders.AdhocBuilder(
      name=registered.name, version=str(info.version), data_dir=data_dir,
      features=info.features,
      split_datasets={"train": _fashion_mnist_split(src_dir, "train"),
                      "test": _fashion_mnist_split(src_dir, "t10k")},
      description=info.description, homepage=info.homepage, citation=info.citation))
  return tfds.builder("fashion_mnist", data_dir=data_dir)


def digits_arrays() -> tuple["np.ndarray", "np.ndarray"]:
  """scikit-learn's digits: uint8 images [1797, 8, 8, 1] in 0..255, int labels."""
  try:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        f"{e}: the digits data set comes with scikit-learn. Install it with "
        "pip install 'big_distill[data]' (or pip install 'scikit-learn>=1.6,<1.10').") from None
  import numpy as np  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  # 17 grey levels, 0..16: scaled to the full byte range like other images.
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  return images, digits.target.astype(np.int64)


def prepare_digits(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Writes `sklearn_digits` (split 'train', 1,797 examples) to `data_dir`."""
  images, labels = digits_arrays()
  examples = [(f"{i:04d}", {"image": image, "label": int(label)})
              for i, (image, label) in enumerate(zip(images, labels))]
  builder = tfds.dataset_builders.AdhocBuilder(
      name=DIGITS_NAME, version="1.0.0", data_dir=data_dir,
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(8, 8, 1)),
          "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
      }),
      split_datasets={"train": examples},
      disable_shuffling=True,  # Keep scikit-learn's order: 'train[:N]' is its first N.
      description="scikit-learn's load_digits (UCI optical recognition of handwritten "
                  "digits, test part), grey levels 0..16 scaled to 0..255.")
  if builder.is_prepared():
    print(f"{DIGITS_NAME} is already prepared in {builder.data_dir}.")
    return builder
  return _build(builder)


def _decodes(file: str) -> bool:
  """Whether the image file decodes (TFDS would fail on it while writing, naming no file)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.io.decode_image(tf.io.read_file(file), expand_animations=False)
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
    return False
  return True


def _folder_examples(path: str) -> tuple[list[str], dict[str, list]]:
  """Reads DIR/<split>/<class>/<image>: the class names and each split's examples.

  Bad folders are a DataError before anything is written: a split without
  class subfolders, a class that some split lacks, a single class, and an
  image that does not decode (named).
  """
  layout = ("Expected DIR/<split>/<class>/<image>, e.g. DIR/train/roses/1.jpg and "
            "DIR/test/tulips/7.jpg.")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--path {path!r} is not a folder.")
  no_images = FileNotFoundError(
      f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {path}/<split>/<class>/. {layout}")

  def images_in(folder):
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))

  if images_in(path):
    raise errors.DataError(f"{path} holds images (e.g. {images_in(path)[0]}) directly, without "
                           f"split and class subfolders. {layout}")
  splits = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
  by_split = {s: sorted(c for c in os.listdir(os.path.join(path, s))
                        if os.path.isdir(os.path.join(path, s, c))) for s in splits}
  for split, names in list(by_split.items()):
    if not names and images_in(os.path.join(path, split)):
      raise errors.DataError(
          f"{os.path.join(path, split)} has no class subfolders (it holds images, e.g. "
          f"{images_in(os.path.join(path, split))[0]}, directly): put each class's images "
          f"in a folder named after the class. {layout}")
    if not names:
      del by_split[split]  # An empty folder: not a split.
  splits = sorted(by_split)
  classes = sorted({c for names in by_split.values() for c in names})
  for split, names in by_split.items():
    lacking = [c for c in classes if c not in names]
    if lacking:
      having = [s for s in splits if lacking[0] in by_split[s]]
      raise errors.DataError(
          f"Split {split!r} of {path} lacks the class folder(s) {lacking}, which split(s) "
          f"{having} have: every split needs the same classes (add {split}/{lacking[0]}/ "
          "with its images, or remove the class from the other splits).")
  if len(classes) == 1:
    raise errors.DataError(f"{path} has one class ({classes[0]!r}): a classifier needs at "
                           f"least two class folders. {layout}")
  if not classes:
    raise no_images
  examples = {}
  for split in splits:
    examples[split] = []
    for c in classes:
      cdir = os.path.join(path, split, c)
      for f in sorted(os.listdir(cdir)):
        if f.lower().endswith(IMAGE_EXTENSIONS):
          file = os.path.join(cdir, f)
          if not _decodes(file):
            raise errors.DataError(f"{file} does not decode as an image: replace or delete "
                                   "it, then prepare again.")
          rel = f"{c}/{f}"
          examples[split].append((rel, {"image": file, "label": c, "file_name": rel}))
  examples = {s: ex for s, ex in examples.items() if ex}
  if not examples:
    raise no_images
  return classes, examples


def prepare_folder(path: str, name: str, data_dir: str | None = None, *,
                   version: str = "1.0.0") -> tfds.core.DatasetBuilder:
  """Makes the TFDS data set `name` from DIR/<split>/<class_name>/*.jpg.

  Features: "image" (the original encoded bytes), "label" (class index in the
  sorted class names) and "file_name" ("<class>/<file>"). The result is found
  by `tfds.builder(name, data_dir=data_dir)`.
  """
  if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
    raise ValueError(f"--name {name!r}: use lower_case_with_underscores (TFDS names).")
  if name in tfds.list_builders(with_community_datasets=False):
    raise ValueError(f"--name {name!r} is a registered TFDS data set; "
                     "choose another name, e.g. my_{name}.")
  classes, examples = _folder_examples(path)
  builder = tfds.dataset_builders.AdhocBuilder(
      name=name, version=version, data_dir=data_dir,
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(),
          "label": tfds.features.ClassLabel(names=classes),
          "file_name": tfds.features.Text(),
      }),
      split_datasets=examples,
      description=f"Images from {os.path.abspath(path)} (big_distill.data.prepare folder).")
  if builder.is_prepared():
    raise FileExistsError(
        f"{name} {version} is already prepared in {builder.data_dir}. Delete that "
        "folder to rebuild it, or give a new --version.")
  _build(builder)
  print(f"Wrote {name}: {len(classes)} classes, "
        + ", ".join(f"{s}={len(e)}" for s, e in examples.items())
        + f", in {builder.data_dir}.")
  return builder


def prepare_tfds(name: str, data_dir: str | None = None,
                 manual_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Any registered TFDS data set, with TFDS' own download (needs internet)."""
  builder = tfds.builder(name, data_dir=data_dir)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        f"{e}. tensorflow-datasets needs it to download data sets: "
        "pip install importlib_resources") from e
  return builder


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog=_MODULE, description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("dataset", help="'fashion_mnist', 'digits', 'folder', or a TFDS name")
  parser.add_argument("--data_dir", default=None, help="where TFDS data sets live")
  parser.add_argument("--path", help="folder: DIR/<split>/<class>/*.jpg")
  parser.add_argument("--name", help="folder: the data set's TFDS name")
  parser.add_argument("--version", default="1.0.0", help="folder: data set version")
  parser.add_argument("--manual_dir", help="TFDS data sets with manual downloads")
  args = parser.parse_args(argv)
  try:
    if args.dataset == "fashion_mnist":
      builder = prepare_fashion_mnist(args.data_dir)
    elif args.dataset in ("digits", DIGITS_NAME):
      builder = prepare_digits(args.data_dir)
    elif args.dataset == "folder":
      if not args.path or not args.name:
        parser.error("folder needs --path=DIR and --name=NAME")
      builder = prepare_folder(args.path, args.name, args.data_dir, version=args.version)
    else:
      builder = prepare_tfds(args.dataset, args.data_dir, args.manual_dir)
  except (errors.UserError, FileNotFoundError, FileExistsError, ValueError,
          ModuleNotFoundError) as e:
    sys.exit(f"error: {e}")
  dd = f'"{args.data_dir}"' if args.data_dir else "None  # TFDS default"
  print(f"Ready: config.input.data.name = {builder.name!r}; "
        f"config.input.data.data_dir = {dd}\n"
        f"Splits: {', '.join(f'{k}={v.num_examples}' for k, v in builder.info.splits.items())}")
  if args.dataset == "folder":  # The walk-through's next step (README, "Distil on your own images").
    data = f"data={builder.name}" + (f",data_dir={args.data_dir}" if args.data_dir else "")
    print(f"Next, its teacher: python -m big_distill.train "
          f"--config=configs/teachers/custom.py:{data}")


if __name__ == "__main__":
  main()
