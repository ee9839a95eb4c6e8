"""Offline preparation: Fashion-MNIST from the Debian files, scikit-learn's digits, image folders."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from big_distill import errors
from big_distill.data import prepare
from tests.conftest import FOLDER_CLASSES, FOLDER_NAME, FOLDER_SPLITS


def test_fashion_mnist_reads_through_tfds(fashion_data_dir):
  builder = tfds.builder("fashion_mnist", data_dir=fashion_data_dir)
  assert builder.is_prepared()
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 60_000, "test": 10_000}
  assert builder.info.features["label"].names[-1] == "Ankle boot"
  ex = next(iter(tfds.as_numpy(builder.as_dataset(split="test[:100]").batch(100))))
  assert ex["image"].shape == (100, 28, 28, 1) and ex["image"].max() > 200
  assert set(ex["label"]) == set(range(10))


# sha256 of each split's decoded images and labels, in the order TFDS reads
# them, as TFDS' own FashionMNIST builder (4.9.10) writes them from these files.
FASHION_MNIST_CONTENT = {
    "train": "8602da88b50fe05b5ff4ca22b1a27857ff6a889eac184656e78f172fc78a2123",
    "test": "0eb01c98b3af234f61cafe3dd2febcf34f6df075d874863a5920428590b27216",
}


def test_fashion_mnist_is_tfds_own_data_set(fashion_data_dir):
  """Written with TFDS' public AdhocBuilder: TFDS' images and labels, in TFDS' order."""
  builder = tfds.builder("fashion_mnist", data_dir=fashion_data_dir)
  for split, sha in FASHION_MNIST_CONTENT.items():
    h = hashlib.sha256()
    for batch in tfds.as_numpy(builder.as_dataset(split=split, batch_size=10_000,
                                                  shuffle_files=False)):
      h.update(batch["image"].tobytes())
      h.update(batch["label"].astype(np.int64).tobytes())
    assert h.hexdigest() == sha, split


def test_fashion_mnist_again_is_a_no_op(fashion_data_dir, capsys):
  prepare.main(["fashion_mnist", f"--data_dir={fashion_data_dir}"])
  out = capsys.readouterr().out
  assert "already prepared" in out and "train=60000" in out


def test_fashion_mnist_missing_files_say_what_to_run(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"apt-get install -y dataset-fashion-mnist"):
    prepare.prepare_fashion_mnist(str(tmp_path / "tfds"), src_dir=str(tmp_path))


def test_folder_is_loadable_by_name(folder_data_dir):
  builder = tfds.builder(FOLDER_NAME, data_dir=folder_data_dir)
  assert builder.info.features["label"].names == list(FOLDER_CLASSES)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == FOLDER_SPLITS
  ex = list(tfds.as_numpy(builder.as_dataset(split="test")))
  names = sorted(e["file_name"].decode() for e in ex)
  assert names[0] == "cat/000.png" and len(set(names)) == FOLDER_SPLITS["test"]
  for e in ex:  # Label matches the folder; image is the original (lossless) one.
    assert FOLDER_CLASSES[e["label"]] == e["file_name"].decode().split("/")[0]
    assert e["image"].shape == (48, 40, 3)
    assert e["image"][0, 0, 0] == 10 * int(e["file_name"][4:7]) + 5


def test_folder_errors(tmp_path, folder_data_dir):
  with pytest.raises(ValueError, match="registered TFDS data set"):
    prepare.prepare_folder(str(tmp_path), "mnist")
  with pytest.raises(ValueError, match="lower_case"):
    prepare.prepare_folder(str(tmp_path), "My-Data")
  with pytest.raises(FileNotFoundError, match="No images"):
    prepare.prepare_folder(str(tmp_path), "empty_data")
  images = os.path.join(os.path.dirname(folder_data_dir), "images")  # Prepared.
  with pytest.raises(FileExistsError, match="already prepared"):
    prepare.prepare_folder(images, FOLDER_NAME, folder_data_dir)
  with pytest.raises(SystemExit):
    prepare.main(["folder", "--name=x"])


def test_folder_cli(tmp_path, capsys):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for c in ("a", "b"):  # Two classes: one is an error (test_bad_folders_are_one_error).
    (tmp_path / "imgs" / "train" / c).mkdir(parents=True)
    tf.io.write_file(str(tmp_path / "imgs" / "train" / c / "x.JPG"),
                     tf.io.encode_jpeg(np.zeros((5, 6, 3), np.uint8)))
  prepare.main(["folder", f"--path={tmp_path / 'imgs'}", "--name=cli_data",
                f"--data_dir={tmp_path / 'tfds'}"])
  assert "config.input.data.name = 'cli_data'" in capsys.readouterr().out
  builder = tfds.builder("cli_data", data_dir=str(tmp_path / "tfds"))
  assert builder.info.splits["train"].num_examples == 2


def _png(path, value=0):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  tf.io.write_file(str(path), tf.io.encode_png(np.full((4, 4, 3), value, np.uint8)))


@pytest.mark.parametrize("files,match", [
    # Images directly in a split folder: no class subfolders.
    (["train/1.png", "train/2.png"], r"/train has no class subfolders \(it holds images, "
                                     r"e.g. 1.png, directly\)"),
    # Images directly in DIR: no split folders either.
    (["1.png"], r"holds images \(e.g. 1.png\) directly, without split and class subfolders"),
    # A split with a class another split lacks.
    (["train/cat/1.png", "train/dog/2.png", "test/cat/3.png", "test/owl/4.png"],
     r"Split 'test' of .* lacks the class folder\(s\) \['dog'\], which split\(s\) \['train'\] "
     r"have: every split needs the same classes \(add test/dog/"),
    # One class.
    (["train/cat/1.png", "test/cat/2.png"], r"has one class \('cat'\): a classifier needs at "
                                            "least two class folders"),
    # An image that does not decode, named.
    (["train/cat/1.png", "train/dog/broken.png!"], r"/train/dog/broken.png does not decode "
                                                   "as an image: replace or delete it"),
])
def test_bad_folders_are_one_error_before_anything_is_written(tmp_path, files, match):
  """`!`: a file whose bytes are no image."""
  for f in files:
    if f.endswith("!"):
      (tmp_path / "imgs" / f[:-1]).parent.mkdir(parents=True, exist_ok=True)
      (tmp_path / "imgs" / f[:-1]).write_bytes(b"not a png")
    else:
      _png(tmp_path / "imgs" / f)
  with pytest.raises(errors.DataError, match=match):
    prepare.prepare_folder(str(tmp_path / "imgs"), "bad_data", str(tmp_path / "tfds"))
  with pytest.raises(SystemExit) as e:  # The command: one `error:` line.
    prepare.main(["folder", f"--path={tmp_path / 'imgs'}", "--name=bad_data",
                  f"--data_dir={tmp_path / 'tfds'}"])
  assert str(e.value.code).startswith("error: ") and len(str(e.value.code).splitlines()) == 1
  assert not (tmp_path / "tfds").exists()  # Nothing written.


def test_command():
  assert prepare.command("fashion_mnist", "/d") == (
      "python -m big_distill.data.prepare fashion_mnist --data_dir=/d")
  assert prepare.command("my_data") == (
      "python -m big_distill.data.prepare folder --path=YOUR_IMAGE_DIR --name=my_data")
  assert prepare.command("oxford_flowers102").startswith(
      "python -m big_distill.data.prepare oxford_flowers102")


# ---- scikit-learn's digits -------------------------------------------------

def test_digits_as_tfds(tmp_path, capsys):
  from sklearn import datasets as sklearn_datasets  # The test extra has it.
  data_dir = str(tmp_path / "tfds")
  prepare.main(["digits", f"--data_dir={data_dir}"])
  assert "config.input.data.name = 'sklearn_digits'" in capsys.readouterr().out
  builder = tfds.builder("sklearn_digits", data_dir=data_dir)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 1797}
  assert builder.info.features["label"].names == [str(d) for d in range(10)]
  ex = next(iter(tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False)
                               .batch(2000))))
  digits = sklearn_datasets.load_digits()
  # Same images in the package's order, 0..16 scaled to 0..255 (16 -> 255).
  assert ex["image"].shape == (1797, 8, 8, 1) and ex["image"].dtype == np.uint8
  np.testing.assert_array_equal(ex["image"][..., 0], np.round(digits.images * 255 / 16))
  np.testing.assert_array_equal(ex["label"], digits.target)
  assert ex["image"].max() == 255 and ex["image"].min() == 0
  # Read by name as any prepared data set, through the trainer's readers
  # (a class-balanced subset too); preparing again is a no-op.
  from big_distill import config_lib  # pylint: disable=g-import-not-at-top
  from big_distill.data import datasets  # pylint: disable=g-import-not-at-top
  d = config_lib.data_config()
  d.name, d.split, d.data_dir = "sklearn_digits", "train[:1500]", data_dir
  datasets.check_prepared(d)
  assert (datasets.num_examples(d), datasets.num_classes(d)) == (1500, 10)
  d.balanced_subset = 100
  assert datasets.num_examples(d) == 100
  assert prepare.command("sklearn_digits", data_dir) == (
      f"python -m big_distill.data.prepare digits --data_dir={data_dir}")
  prepare.main(["digits", f"--data_dir={data_dir}"])
  out = capsys.readouterr().out
  assert "already prepared" in out and "train=1797" in out


def test_digits_without_scikit_learn_says_what_to_install(monkeypatch, tmp_path):
  import sys  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "sklearn", None)  # Makes the import fail.
  with pytest.raises(ModuleNotFoundError, match=r"pip install 'big_distill\[data\]'"):
    prepare.prepare_digits(str(tmp_path))
