"""MobileNet students and other data sets' images through the paper configs.

`:runlocal` on TFDS mock data (the paper configs' fixtures, tests/helpers.py):
the ImageNet MobileNet config with BatchNorm and two teachers trains end to
end; Pets distilled on Food101's images into a MobileNet student and SUN397
on ImageNet's images are built and traced up to their first compile; the
Fashion-MNIST miniature trains end to end on scikit-learn's digits. Runs with
images of another data set report the teacher task's evaluations and no
label loss.
"""

import math
import os

import jax
import numpy as np
import pytest

from big_distill import checks
from big_distill import model_set
from big_distill import train
from big_distill.models import mobilenet_v3
from tests import helpers
from tests.helpers import fast_compiles  # pylint: disable=unused-import  (autouse)
from tests.helpers import get_config
from tests.helpers import mock_data
from tests.helpers import read_metrics
from tests.helpers import tfds_metadata  # pylint: disable=unused-import  (fixture)

OTHER_IMAGES = "labels of the training data are ignored"


def _run(config, tmp_path, metadata, caplog):
  helpers.with_random_checkpoints(config, tmp_path)
  workdir = tmp_path / "workdir"
  with mock_data(metadata), caplog.at_level("INFO"):
    train.train(config, str(workdir))
  rows, last = read_metrics(str(workdir))
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses and all(math.isfinite(x) for x in losses)
  return workdir, rows, last


def _assert_task_evals(config, last):
  """Every evaluator, on the teacher's task, wrote its metrics."""
  for ev, ec in config.evals.items():
    key = {"classification": "student_top1", "distance": "t1_kl",
           "calibration": "student_ece"}[ec.type]
    assert math.isfinite(last[f"{ev}/{key}"]), ev


def test_runlocal_trains_end_to_end(tfds_metadata, tmp_path, caplog):
  """The BatchNorm MobileNet from the two-teacher ensemble trains, on its own
  images: with the label loss logged, saved with its batch statistics."""
  config = get_config("imagenet_mobilenet", "variant=small,norm=batch,ensemble,runlocal")
  workdir, rows, last = _run(config, tmp_path, tfds_metadata, caplog)
  _assert_task_evals(config, last)
  for ev, ec in config.evals.items():  # Both teachers' too: test_configs' ImageNet run.
    for metric in helpers.eval_metrics(config, ec):
      assert math.isfinite(last[f"{ev}/{metric}"]), f"{ev}/{metric}"
  assert not [r for r in caplog.records if OTHER_IMAGES in r.getMessage()]
  assert any("train/label_loss" in r for r in rows)
  arrays = mobilenet_v3.to_arrays(
      mobilenet_v3.load(_template(config), str(workdir / "student.npz")))
  assert arrays["head/kernel"].shape[-1] == config.num_classes
  assert any(k.startswith("batch_stats/") for k in arrays)


@pytest.mark.parametrize("name,arg,source", [
    ("pets_r50", "runlocal,images=food101,student=mobilenet_v3", "food101"),
    ("sun397_r50", "runlocal,images=imagenet2012", "imagenet2012"),
])
def test_runlocal_on_other_images_builds_without_compiling(name, arg, source, tfds_metadata,
                                                          tmp_path, caplog):
  """Another data set's images: the run reads them, says once that their labels
  are ignored, has no label loss and evaluates the teacher's task. Traced up
  to its first compile (helpers.trace_training); such a run trains end to end
  in test_digits_images_for_the_fashion_mnist_teacher."""
  config = helpers.with_random_checkpoints(get_config(name, arg), tmp_path)
  with mock_data(tfds_metadata), caplog.at_level("INFO"):
    run = helpers.trace_training(config)
  assert config.input.data.name == source
  assert {ec.data.name for ec in config.evals.values()} != {source}
  assert len([r for r in caplog.records if OTHER_IMAGES in r.getMessage()]) == 1
  assert "train/loss" in run.metrics and "train/label_loss" not in run.metrics
  for ev, ec in config.evals.items():
    key = {"classification": "student_top1", "distance": "t1_kl",
           "calibration": "student_ece"}[ec.type]
    assert f"{ev}/{key}" in run.evals[ev], ev
  variables = run.state["variables"]
  assert variables["params"]["head"]["kernel"].shape[-1] == config.num_classes
  if config.student_name == "mobilenet_v3":  # GroupNorm: no batch statistics to save.
    assert config.student.norm == "group" and "batch_stats" not in variables


def _template(config):
  """Zeros of the student's weights (with batch_stats if it has them)."""
  shapes = model_set.weight_shapes(model_set.build_models(config), "student")
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


@pytest.mark.parametrize("name", ["flowers_r50", "pets_r50", "food101_r50", "sun397_r50"])
def test_small_data_configs_take_a_mobilenet_student(name):
  c = get_config(name, "student=mobilenet_v3")
  assert c.student_name == "mobilenet_v3"
  assert dict(c.student) == dict(variant="large", width=1.0, norm="group", groups=8)
  assert get_config(name).student_name == "bit"  # The paper's R50x1 by default.


# `fast`'s steps, as the configs' docstrings give them.
FAST_STEPS = {"pets_r50": 6_469, "sun397_r50": 14_869}


@pytest.mark.parametrize("name", ["pets_r50", "sun397_r50"])
def test_other_images_keep_the_in_domain_step_budget(name):
  own = get_config(name, "variant=fast")
  for images in ("food101", "imagenet2012"):
    c = get_config(name, f"variant=fast,images={images}")
    assert c.input.data.name == images != own.input.data.name
    assert c.total_epochs is None and c.total_steps == FAST_STEPS[name]
    assert {e.data.name for e in c.evals.values()} == {e.data.name for e in own.evals.values()}
    assert not checks.training_labels_are_the_tasks(c)
  assert checks.training_labels_are_the_tasks(own)
  with pytest.raises(ValueError, match="images='flowers'"):
    get_config(name, "images=flowers")


def test_fmnist_mobilenet_is_fmnist_distill_with_another_student():
  from configs import fmnist_distill  # pylint: disable=g-import-not-at-top
  from configs import fmnist_mobilenet  # pylint: disable=g-import-not-at-top
  c = fmnist_mobilenet.get_config("lr=0.01,norm=batch,runlocal")
  bit = fmnist_distill.get_config("lr=0.01,runlocal")
  assert c.student_name == "mobilenet_v3" and bit.student_name == "bit"
  assert dict(c.student) == dict(variant="small", width=0.25, norm="batch", small_input=True)
  for field in ("lr", "total_steps", "teachers", "t1", "mixup", "distill", "input"):
    assert c[field] == bit[field], field


def test_digits_images_for_the_fashion_mnist_teacher(fashion_data_dir, tmp_path, caplog):
  """configs/fmnist_other_images.py:runlocal: distilled on scikit-learn's digits,
  evaluated on Fashion-MNIST."""
  pytest.importorskip("sklearn")
  from big_distill.data import prepare  # pylint: disable=g-import-not-at-top
  from configs import fmnist_other_images  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  os.symlink(os.path.join(fashion_data_dir, "fashion_mnist"), data_dir / "fashion_mnist")
  prepare.prepare_digits(str(data_dir))
  c = fmnist_other_images.get_config(f"source=digits,runlocal,data_dir={data_dir}")
  assert c.input.data.name == "sklearn_digits"
  c.t1_init = helpers.write_random_bit(str(tmp_path / "t1.npz"), 10, **c.t1.to_dict())
  workdir = tmp_path / "run"
  with caplog.at_level("INFO"):
    train.train(c, str(workdir))
  rows, last = read_metrics(str(workdir))
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert losses and all(math.isfinite(x) for x in losses)
  assert any(OTHER_IMAGES in r.getMessage() for r in caplog.records)
  assert not any("train/label_loss" in r for r in rows)
  _assert_task_evals(c, last)
  assert {e.data.name for e in c.evals.values()} == {"fashion_mnist", "sklearn_digits"}


def test_related_images_are_the_other_fashion_mnist_classes(fashion_data_dir):
  """configs/fmnist_other_images.py:source=fmnist_other: the student's images
  come from the odd classes only; test_heldout reads the even classes only."""
  from big_distill.data import datasets  # pylint: disable=g-import-not-at-top
  from big_distill.data import input as input_lib  # pylint: disable=g-import-not-at-top
  from configs import fmnist_other_images  # pylint: disable=g-import-not-at-top
  c = fmnist_other_images.get_config(f"source=fmnist_other,images=100,data_dir={fashion_data_dir}")
  assert checks.training_labels_are_the_tasks(c)  # Its own labels: only metrics read them.
  c.input.cache = "encoded"
  labels = np.concatenate([b["label"] for b in
                           input_lib.make_train_dataset(c).take(2).as_numpy_iterator()])
  assert set(labels.tolist()) == {1, 3, 5, 7, 9} and len(labels) == 128
  assert datasets.num_examples(c.evals.train_dist.data) == 100
  assert tuple(c.evals.train_dist.data.classes) == (1, 3, 5, 7, 9)
  ds, num_batches = input_lib.make_eval_dataset(c, "test_heldout")
  assert num_batches == 5 * 1000 // c.evals.test_heldout.batch_size
  held = [b["label"][b["_mask"] > 0] for b in ds.as_numpy_iterator()]
  np.testing.assert_array_equal(np.bincount(np.concatenate(held), minlength=10),
                                [1000, 0] * 5)
  assert datasets.num_examples(c.evals.test.data) == 10_000  # All ten classes.
