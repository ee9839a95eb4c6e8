"""Every config in configs/ builds its run, and says what the paper says.

Runs use `:runlocal` on TFDS mock data (random images from each builder's
feature spec) over metadata that gives every split its real size, so split
names and slices are checked as on the real data sets. Teachers are random
tiny BiT models saved as `.npz`, shaped as each runlocal config's teachers.
Every config's run is built and traced up to its first compile; one config
of each code path trains end to end (see "Every config runs").
The expected settings below are written from the paper and its released
settings (big_vision configs/proj/distill), not from the
configs.
"""

import json
import math
import os

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from big_distill import config_lib
from big_distill import errors
from big_distill import evaluate
from big_distill import export
from big_distill import setup
from big_distill import train
from big_distill.data import datasets
from big_distill.data import prepare
from big_distill.models import bit
from tests import helpers
from tests.helpers import fast_compiles  # pylint: disable=unused-import  (autouse)
from tests.helpers import get_config
from tests.helpers import mock_data
from tests.helpers import read_metrics
from tests.helpers import tfds_metadata  # pylint: disable=unused-import  (fixture)

# The released settings (big_vision configs/proj/distill): (epochs, lr, weight decay, temperature).
RELEASED = {
    "flowers_r50": dict(fast=(10_000, .003, 3e-4, 10), medium=(100_000, .001, 1e-4, 1),
                        long=(1_000_000, .0003, 1e-5, 1)),
    "pets_r50": dict(fast=(1_000, .01, 1e-3, 5), medium=(3_000, .003, 3e-4, 10),
                     long=(30_000, .003, 1e-5, 2)),
    "food101_r50": dict(fast=(100, .01, 1e-3, 10), medium=(1_000, .001, 3e-4, 10),
                        long=(3_000, .01, 1e-4, 5)),
    "sun397_r50": dict(fast=(100, .01, 1e-3, 10), medium=(1_000, .001, 1e-4, 10),
                       long=(3_000, .01, 3e-5, 10)),
}
# TFDS name, classes, training examples (the release: Pets train[:90%]).
DATA = {
    "flowers": ("oxford_flowers102", 102, 1020),
    "pets": ("oxford_iiit_pet", 37, 3312),
    "food101": ("food101", 101, 68175),
    "sun397": ("sun397", 397, 76128),
    "imagenet": ("imagenet2012", 1000, 1281167),
}
SMALL = ["flowers", "pets", "food101", "sun397"]
# The paper's released teachers: gs://bit_models/distill/R152x2_T_{name}.npz.
RELEASED_TEACHER = {"flowers": "flowers128", "pets": "pet128", "food101": "food128",
                    "sun397": "sun128"}
DISTILL = [f"{d}_r50" for d in SMALL] + ["imagenet_r50"]
TEACHERS = [f"teachers.{d}" for d in SMALL] + ["teachers.imagenet"]
BIT_M_CLASSES = 21843


# ---- Every config runs -------------------------------------------------------
#
# Every config is built as train.train builds it, up to its first compile:
# checked, its data and files read (the teachers' random files, and the
# teachers' fine-tuning start from a BiT-M stand-in), one batch of its input
# pipeline made, and its train step and evaluators traced for their shapes
# (helpers.trace_training). One config of each recipe's code path trains for
# real (its 3 steps and evaluations); the others share their programs but for
# sizes and class counts:
#   - function matching from a BiT teacher into a BiT student: the walk-through
#     below (configs/custom_r50.py, through the commands);
#   - BiT-HyperRule fine-tuning from a BiT-M file with another head, mixup on
#     labels: teachers.food101 here;
#   - two teachers at two resolutions on ImageNet's stream:
#     imagenet_mobilenet in test_mobilenet_train.py;
#   - a ViT teacher: test_vit_runlocal_teacher_then_distillation below.
TRAINED_END_TO_END = ["teachers.food101"]


@pytest.mark.parametrize("name", DISTILL + TEACHERS)
def test_runlocal_builds_its_run_without_compiling(name, tfds_metadata, tmp_path):
  config = helpers.with_random_checkpoints(get_config(name, "runlocal"), tmp_path,
                                           BIT_M_CLASSES)
  with mock_data(tfds_metadata):
    run = helpers.trace_training(config)
  b = config.input.batch_size
  for m in ("student", *config.teachers):
    res = config[f"{m}_res"]
    assert run.batch["image"][m] == jax.ShapeDtypeStruct((b, res, res, 3), np.float32), m
  assert run.batch["label"] == jax.ShapeDtypeStruct((b,), np.int32)
  loss = run.metrics["train/loss"]
  assert (loss.shape, loss.dtype) == ((), np.float32)
  for ev, ec in config.evals.items():
    assert {f"{ev}/{m}" for m in helpers.eval_metrics(config, ec)} <= run.evals[ev], ev
  assert run.state["variables"]["params"]["head"]["kernel"].shape[-1] == config.num_classes


@pytest.mark.parametrize("name", TRAINED_END_TO_END)
def test_runlocal_trains_end_to_end(name, tfds_metadata, tmp_path):
  config = helpers.with_random_checkpoints(get_config(name, "runlocal"), tmp_path,
                                           BIT_M_CLASSES)
  workdir = tmp_path / "workdir"
  with mock_data(tfds_metadata):
    train.train(config, str(workdir))
  _assert_trained(config, workdir)


def _assert_trained(config, workdir):
  """Finite losses, every evaluator's metrics finite, the student's file of the task."""
  rows, last = read_metrics(str(workdir))
  losses = [row["train/loss"] for row in rows if "train/loss" in row]
  assert losses and all(math.isfinite(x) for x in losses)
  for ev, ec in config.evals.items():
    for metric in helpers.eval_metrics(config, ec):
      assert math.isfinite(last[f"{ev}/{metric}"]), f"{ev}/{metric}"
  params = bit.read_npz(os.path.join(workdir, "student.npz"))
  assert params["resnet/head/conv2d/kernel"].shape[-1] == config.num_classes


@pytest.mark.parametrize("name", DISTILL + TEACHERS)
def test_splits_exist_with_the_real_sizes(name, tfds_metadata):
  """The full configs' train and eval splits exist; epochs count the right examples."""
  config = get_config(name)
  dataset = name.removeprefix("teachers.").removesuffix("_r50")
  tfds_name, num_classes, train_size = DATA[dataset]
  assert config.num_classes == num_classes
  with mock_data(tfds_metadata):
    for data in [config.input.data, *(ec.data for ec in config.evals.values())]:
      assert data.name == tfds_name
      datasets.check_prepared(data)
    assert datasets.num_examples(config.input.data) == train_size
  assert {ec.type for ec in config.evals.values()} >= (
      {"classification", "distance", "calibration"} if config.teachers
      else {"classification"})


# ---- The paper's settings ----------------------------------------------------


@pytest.mark.parametrize("name", list(RELEASED))
@pytest.mark.parametrize("variant", ["fast", "medium", "long"])
def test_small_data_variants_are_the_released_settings(name, variant):
  config = get_config(name, f"variant={variant}")
  epochs, lr, wd, t = RELEASED[name][variant]
  assert (config.total_epochs, config.lr, config.wd, config.distill.t) == (epochs, lr, wd, t)
  assert config.total_steps is None and config.total_examples is None
  # The recipe shared by all small data sets.
  assert config.input.batch_size == 512
  assert config.optim.name == "adam" and config.optim.mu_dtype == "bfloat16"
  assert config.grad_clip_norm == 1.0
  assert config.schedule.decay_type == "cosine" and config.schedule.warmup_steps == 1500
  assert config.mixup.p == 1.0
  assert config.distill.views == "consistent" and config.distill.loss == "kl"
  assert config.distill.label_weight == 0
  assert config.student.to_dict() == dict(depth=50, width=1.0) and config.student_res == 128
  assert config.student_init is None
  assert config.teachers == ("t1",)
  # The paper's released teacher, made with big_vision's bit_paper (-inf padding).
  assert config.t1.to_dict() == dict(depth=152, width=2.0, stem_pool_pad="neg_inf")
  assert config.t1_res == 128
  assert config.input.pp == "decode"
  assert config.input.pp_random == "inception_crop(128)|flip_lr"
  assert config.input.pp_post == "value_range(-1, 1)"
  # Decoded pixels where they fit in host memory, encoded bytes otherwise.
  assert config.input.cache == ("decoded" if name in ("flowers_r50", "pets_r50") else "encoded")
  for ec in config.evals.values():
    assert ec.pp == "decode|resize_small(160)|central_crop(128)|value_range(-1, 1)"
  dataset = name.removesuffix("_r50")
  assert config.t1_init == f"gs://bit_models/distill/R152x2_T_{RELEASED_TEACHER[dataset]}.npz"


@pytest.mark.parametrize("arg", ["", "res=224", "res=160"])
def test_imagenet_teachers_share_the_student_crop(arg):
  config = get_config("imagenet_r50", arg)
  assert config.student_res == (160 if arg == "res=160" else 224)
  assert config.student.to_dict() == dict(depth=50, width=1.0)
  assert config.teachers == ("t1", "t2")
  assert (config.t1_res, config.t2_res) == (224, 384)
  for t in config.teachers:
    assert config[t].to_dict() == dict(depth=152, width=2.0, stem_pool_pad="neg_inf")
    assert config[f"{t}_name"] == "bit" and config[f"{t}_init"]
  assert config.t1_init == "gs://bit_models/distill/R152x2_T_224.npz"
  assert config.t2_init == "gs://bit_models/distill/R152x2_T_384.npz"
  # One crop for all: consistent views, and an inception crop without a size
  # of its own, which each model resizes to its resolution.
  assert config.distill.views == "consistent"
  crop, *rest = config.input.pp_random.split("|")
  assert crop.endswith("inception_crop") and rest == ["flip_lr"]
  assert config.input.pp_post == "value_range(-1, 1)"
  assert config.mixup.p == 1.0
  assert (config.lr, config.wd, config.distill.t) == (0.03, 3e-4, 1.0)
  assert config.total_epochs == 1200 and config.schedule.warmup_steps == 5000
  assert config.input.batch_size == 4096
  assert config.input.cache == "none"
  assert config.input.data.split == "train"
  assert {ec.data.split for ec in config.evals.values()} >= {"validation"}


def test_teachers_follow_bit_hyperrule():
  # (steps, warm-up, mixup) by training-set size: <20k, <500k, else.
  expected = {"flowers": (500, 0.0), "pets": (500, 0.0), "food101": (10_000, 0.1),
              "sun397": (10_000, 0.1), "imagenet": (20_000, 0.1)}
  for dataset, (steps, mixup) in expected.items():
    config = get_config(f"teachers.{dataset}")
    assert config.teachers == ()
    assert config.student.to_dict() == dict(depth=152, width=2.0)
    assert config.student_init == "BiT-M-R152x2.npz"
    assert config.total_steps == steps and config.mixup.p == mixup
    assert config.optim.name == "sgd" and config.optim.momentum == 0.9
    assert config.input.batch_size == 512 and config.lr == 0.003
    assert config.schedule.warmup_steps > 0
    assert config.student_res == (224 if dataset == "imagenet" else 128)
  assert get_config("teachers.imagenet", "res=384").student_res == 384


def test_teacher_outputs_are_what_distillation_reads():
  """Each teacher config's model is its distillation's teacher (BiT's padding
  aside: the default teacher is the released big_vision one), and with
  runlocal its workdir is what the distillation loads."""
  pairs = [(f"{d}_r50", "t1", f"teachers.{d}", "", f"{d}_local") for d in SMALL] + [
      ("imagenet_r50", t, "teachers.imagenet", f"res={res}", f"imagenet_local_{res}")
      for t, res in (("t1", 224), ("t2", 384))]
  for student_name, t, teacher_name, teacher_arg, workdir in pairs:
    for local in (False, True):
      student = get_config(student_name, "runlocal" if local else "")
      teacher = get_config(teacher_name, ",".join(
          a for a in (teacher_arg, "runlocal" if local else "") if a))
      kwargs = student[t].to_dict()
      assert kwargs.pop("stem_pool_pad", "zeros") == ("zeros" if local else "neg_inf")
      assert kwargs == teacher.student.to_dict()
      assert student[f"{t}_res"] == teacher.student_res
      assert student.num_classes == teacher.num_classes
      if local:
        assert student[f"{t}_init"] == f"workdirs/teachers/{workdir}/student.npz"
      else:
        assert student[f"{t}_init"].startswith("gs://bit_models/distill/R152x2_T_")


# ---- Errors ------------------------------------------------------------------


@pytest.mark.parametrize("name", DISTILL + TEACHERS)
def test_unknown_argument_is_a_clear_error(name):
  with pytest.raises(ValueError, match="Unknown config argument 'varient'"):
    get_config(name, "varient=fast")


@pytest.mark.parametrize("name, arg, match", [
    ("flowers_r50", "variant=slow", "Unknown variant='slow'.*fast, medium, long"),
    ("teachers.imagenet", "res=256", "res=256.*224, 384"),
])
def test_unknown_argument_value_is_a_clear_error(name, arg, match):
  with pytest.raises(ValueError, match=match):
    get_config(name, arg)


def test_missing_teacher_checkpoint_is_a_clear_error(tfds_metadata, tmp_path):
  config = get_config("flowers_r50", "runlocal")
  config.t1_init = str(tmp_path / "nowhere" / "student.npz")
  with mock_data(tfds_metadata), pytest.raises(train.ConfigError, match=r"Teacher 't1'.*nowhere"):
    train.train(config, str(tmp_path / "workdir"))


@pytest.mark.parametrize("name", DISTILL)
def test_unreadable_gs_teacher_fails_before_any_compile(name, tfds_metadata, tmp_path,
                                                       monkeypatch):
  """No network here: the released teacher cannot be read. One message names
  the file and how to use a local copy, before anything is built."""
  config = get_config(name)  # The full config, with its default (gs://) teachers.
  monkeypatch.setattr(setup, "build", lambda *a, **k: pytest.fail("reached the set-up"))
  with mock_data(tfds_metadata), pytest.raises(errors.CheckpointError) as e:
    train.train(config, str(tmp_path / "workdir"))
  msg = str(e.value)
  path = config.t1_init
  assert f"config.t1_init={path} cannot be read" in msg
  assert f"gsutil cp {path} DIR/" in msg
  assert f"--config.t1_init=DIR/{os.path.basename(path)}" in msg
  assert not (tmp_path / "workdir" / "config.json").exists()


def _parse_command_line(*args):
  argv = ["prog", *args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def test_command_line_loads_and_locks_the_config():
  """`--config=configs/X.py:args` and `--config.field=` overrides, as train.py reads them."""
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "imagenet_r50.py")
  config = _parse_command_line(f"--config={path}:res=160", "--config.t2_init=gs://b/t2.npz")
  assert config.student_res == 160 and config.t2_init == "gs://b/t2.npz"
  with pytest.raises((flags.Error, AttributeError), match="t3_init"):
    _parse_command_line(f"--config={path}", "--config.t3_init=x")


# ---- Any data set by name (configs/teachers/custom.py, configs/custom_r50.py) --


def _custom(name, folder_data_dir, extra=""):
  return get_config(name, f"data=bd_test_images,data_dir={folder_data_dir}{extra}")


def test_custom_configs_read_the_data_set_from_its_metadata(folder_data_dir):
  """The image-folder fixture: 3 classes, train (24) and test (23), 48x40 images."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  train_size = tfds.builder("bd_test_images", data_dir=folder_data_dir).info.splits[
      "train[:90%]"].num_examples
  teacher = _custom("teachers.custom", folder_data_dir)
  student = _custom("custom_r50", folder_data_dir)
  for c in (teacher, student):
    config_lib.check_required(c)
    assert c.num_classes == 3
    # No validation split: the last 10% of train is held out; test for the end.
    assert c.input.data.split == "train[:90%]"
    assert {n: e.data.split for n, e in c.evals.items() if n.endswith("val")} == {
        n: "train[90%:]" for n in c.evals if n.endswith("val")}
    assert all(e.data.split == "test" and e.log_steps == -1
               for n, e in c.evals.items() if n.endswith("test"))
    assert all(e.data.data_dir == folder_data_dir for e in c.evals.values())
  # BiT-HyperRule: under 20k images, 500 steps, warm-up 100, no mixup; images
  # under 96px: resized to 160, 128px crops. From BiT-M R152x2.
  assert (teacher.total_steps, teacher.schedule.warmup_steps, teacher.mixup.p) == (500, 100, 0)
  assert teacher.input.pp == "decode|resize(160)" and teacher.student_res == 128
  assert teacher.student_init == "gs://bit_models/BiT-M-R152x2.npz" and not teacher.teachers
  # The student: Flowers' fast budget in images seen, the teacher's resolution,
  # the teacher run's default workdir.
  assert student.total_epochs == pytest.approx(10_000 * 1020 / train_size)
  assert (student.lr, student.wd, student.distill.t) == (0.003, 3e-4, 10.0)
  assert (student.student_res, student.t1_res, student.mixup.p) == (128, 128, 1.0)
  assert student.t1_init == config_lib.default_workdir(
      f"configs/teachers/custom.py:data=bd_test_images,data_dir={folder_data_dir}")
  long = _custom("custom_r50", folder_data_dir, ",variant=long,student=mobilenet_v3")
  assert long.total_epochs == pytest.approx(1_000_000 * 1020 / train_size)
  assert long.student_name == "mobilenet_v3"


def test_custom_schedules_scale_with_the_data_set():
  from big_distill.configs import custom  # pylint: disable=g-import-not-at-top
  assert custom.hyperrule(1020) == (500, 100, 0.0)
  assert custom.hyperrule(68_175) == (10_000, 500, 0.1)
  assert custom.hyperrule(1_281_167) == (20_000, 500, 0.1)
  assert custom.hyperrule_res((48, 40)) == (160, 128)
  assert custom.hyperrule_res((500, 375)) == (512, 480)


def test_custom_data_mistakes_are_clear_errors(tmp_path):
  with pytest.raises(errors.ConfigError, match="data=NAME is required"):
    get_config("custom_r50")
  with pytest.raises(errors.DataError, match=r"data=my_photos: no data set of that name is "
                     r"prepared in .*Prepare it first \(python -m big_distill.data.prepare "
                     r"folder --path=YOUR_IMAGE_DIR --name=my_photos --data_dir="):
    get_config("teachers.custom", f"data=my_photos,data_dir={tmp_path}")
  with pytest.raises(errors.ConfigError, match="Unknown variant='slow'"):
    get_config("custom_r50", "data=x,variant=slow")


def test_custom_runlocal_walk_through(folder_data_dir, tmp_path, monkeypatch, capsys):
  """README's "Distil on your own images" at runlocal size, through the commands'
  main(): prepare the image folder, fine-tune the teacher, check it, distil it,
  evaluate the student, export it in both layouts; each step's output names
  what the next one reads."""
  monkeypatch.chdir(tmp_path)  # Default workdirs: ./workdirs/...; the student finds the teacher.
  images = os.path.join(os.path.dirname(folder_data_dir), "images")  # The fixture's folder.
  data_dir = str(tmp_path / "tfds")
  prepare.main(["folder", f"--path={images}", "--name=bd_walk_images", f"--data_dir={data_dir}"])
  data = f"data=bd_walk_images,data_dir={data_dir}"
  assert ("Next, its teacher: python -m big_distill.train --config=configs/teachers/custom.py:"
          f"{data}\n") in capsys.readouterr().out
  data += ",runlocal"
  teacher_config = f"--config={helpers.REPO}/configs/teachers/custom.py:{data}"
  student_config = f"--config={helpers.REPO}/configs/custom_r50.py:{data}"
  teacher_dir = config_lib.default_workdir(teacher_config.removeprefix("--config="))
  student_dir = config_lib.default_workdir(student_config.removeprefix("--config="))

  def metrics(*argv):
    capsys.readouterr()
    helpers.run_main(evaluate, ["evaluate", *argv], monkeypatch)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]

  helpers.run_main(train, ["train", teacher_config], monkeypatch)
  _assert_trained(get_config("teachers.custom", data), teacher_dir)
  teacher_npz = os.path.join(teacher_dir, "student.npz")
  assert os.path.exists(teacher_npz)
  assert f"--config.t1_init={os.path.abspath(teacher_npz)})" in capsys.readouterr().out
  assert math.isfinite(metrics(teacher_config, f"--init={teacher_dir}")["val/student_top1"])
  helpers.run_main(train, ["train", student_config], monkeypatch)  # t1_init: teacher_dir.
  _assert_trained(get_config("custom_r50", data), student_dir)
  got = metrics(student_config, f"--init={student_dir}")
  assert math.isfinite(got["val/student_top1"]) and math.isfinite(got["dist_val/t1_kl"])
  params = bit.read_npz(os.path.join(student_dir, "student.npz"))
  assert params["resnet/head/conv2d/kernel"].shape[-1] == 3
  for layout in ("bit", "big_vision"):
    helpers.run_main(export, ["export", f"--workdir={student_dir}", f"--layout={layout}"],
                     monkeypatch)
    path = os.path.join(student_dir, f"student_{layout}.npz")
    assert f"Wrote {path}" in capsys.readouterr().out
  assert bit.read_npz(os.path.join(student_dir, "student_big_vision.npz"))[
      "head/kernel"].shape[-1] == 3
  exported = bit.read_npz(os.path.join(student_dir, "student_bit.npz"))
  assert params.keys() == exported.keys()
  for k in params:
    np.testing.assert_array_equal(params[k], exported[k])



# ---- ViT teachers of one's own (issue 25): configs/teachers/vit.py, configs/flowers_vit_r50.py ----


@pytest.mark.parametrize("model,zoo,pool_type", [
    ("siglip_b16", "gs://big_vision/siglip/webli_en_b16_224_63724782.npz:img", "map"),
    ("deit3_b16", "gs://big_vision/zoo/deit3/bv_deit_3_base_224_21k.npz", "tok")])
@pytest.mark.parametrize("dataset", ["flowers", "pets"])
def test_vit_teachers_fine_tune_the_zoo_models_on_the_bit_teachers_recipe(model, zoo, pool_type,
                                                                         dataset):
  c = get_config("teachers.vit", f"model={model},data={dataset}")
  bit_teacher = get_config(f"teachers.{dataset}")
  assert (c.student_name, c.student.to_dict(), c.student_init) == (
      "vit", dict(variant="B/16", pool_type=pool_type), zoo)
  assert c.student_res == bit_teacher.student_res == 128 and not c.teachers
  assert (c.grad_clip_norm, c.schedule.decay_type) == (1.0, "cosine")  # The ViT paper's.
  for field in ("num_classes", "input", "evals", "lr", "wd", "total_steps", "optim", "mixup"):
    assert c[field] == bit_teacher[field], field
  local = get_config("teachers.vit", f"model={model},data={dataset},runlocal")
  assert local.student_init is None and local.student.pool_type == pool_type
  assert local.student.width == 32 and local.total_steps == 3


@pytest.mark.parametrize("teacher", ["siglip_b16", "deit3_b16"])
def test_flowers_vit_r50_is_flowers_r50_with_the_vit_teacher(teacher):
  for arg in ("", "variant=long,student=mobilenet_v3", "runlocal", "fixed=cc,runlocal"):
    c = get_config("flowers_vit_r50", ",".join(a for a in (f"teacher={teacher}", arg) if a))
    ref = get_config("flowers_r50", arg)
    local = "runlocal" in arg
    made_by = get_config("teachers.vit", f"model={teacher},data=flowers{',runlocal' * local}")
    assert (c.t1_name, c.t1.to_dict(), c.t1_res) == ("vit", made_by.student.to_dict(),
                                                     made_by.student_res)
    workdir = f"workdirs/teachers/flowers_vit_{teacher}{'_local' * local}"
    assert c.t1_init == f"{workdir}/student.npz"
    for field in ("t1", "t1_name", "t1_init"):
      del c[field], ref[field]
    assert c == ref


def test_vit_teacher_configs_reject_unknown_models_and_data():
  with pytest.raises(errors.ConfigError, match="model='vit_h14'.*siglip_b16, deit3_b16"):
    get_config("teachers.vit", "model=vit_h14")
  with pytest.raises(errors.ConfigError, match="data='food101'.*flowers, pets"):
    get_config("teachers.vit", "data=food101")
  with pytest.raises(errors.ConfigError, match="model='x'"):
    get_config("flowers_vit_r50", "teacher=x")


def test_vit_runlocal_teacher_then_distillation(tfds_metadata, tmp_path, monkeypatch):
  """The docstrings' two runlocal commands: a tiny ViT fine-tuned from scratch
  (no download), then distilled into the runlocal R26 from its workdir."""
  monkeypatch.chdir(tmp_path)
  teacher = get_config("teachers.vit", "runlocal")
  student = get_config("flowers_vit_r50", "runlocal")
  with mock_data(tfds_metadata):
    train.train(teacher, os.path.dirname(student.t1_init))
    train.train(student, str(tmp_path / "student"))
  _, last = read_metrics(str(tmp_path / "student"))
  assert math.isfinite(last["train/t1_loss"]) and math.isfinite(last["dist_val/t1_kl"])
  assert math.isfinite(last["val/t1_top1"])


def test_unreadable_siglip_tower_is_one_error_with_the_file_to_copy(tfds_metadata, tmp_path,
                                                                   monkeypatch):
  """No network here: the zoo file cannot be read. The message names the
  file without its `:img` suffix for gsutil, and the suffix for the copy."""
  config = get_config("teachers.vit", "model=siglip_b16")
  monkeypatch.setattr(setup, "build", lambda *a, **k: pytest.fail("reached the set-up"))
  with mock_data(tfds_metadata), pytest.raises(errors.CheckpointError) as e:
    train.train(config, str(tmp_path / "workdir"))
  msg = str(e.value)
  assert "gsutil cp gs://big_vision/siglip/webli_en_b16_224_63724782.npz DIR/" in msg
  assert "--config.student_init=DIR/webli_en_b16_224_63724782.npz:img" in msg


# ---- The Fashion-MNIST miniature's ViT configs (docs/results.md, issue 25) ----------


def _random_vit_file(config, name, path):
  """A random ViT file (non-zero head) shaped as the config's model `name`; no compile."""
  from big_distill import weights  # pylint: disable=g-import-not-at-top
  from big_distill.models import vit  # pylint: disable=g-import-not-at-top
  model = vit.Model(config.num_classes, **config[name].to_dict())
  shapes = jax.eval_shape(lambda k: weights.random_params(model, config[f"{name}_res"], k),
                          jax.random.key(0))
  rng = np.random.default_rng(0)
  vit.save(jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(s.dtype), shapes),
           str(path))
  return str(path)


def test_fmnist_vit_configs_swap_one_model_of_the_miniature():
  from big_distill.configs import fmnist  # pylint: disable=g-import-not-at-top
  bit_c = get_config("fmnist_distill", "")
  teacher = get_config("fmnist_teacher", "model=vit")
  assert teacher.student_name == "vit" and teacher.student.to_dict() == fmnist.VIT_TEACHER
  vit_to_bit = get_config("fmnist_vit", "student=bit,teacher=vit")
  assert vit_to_bit.student_name == "bit" and vit_to_bit.student == bit_c.student
  assert vit_to_bit.t1_name == "vit" and vit_to_bit.t1.to_dict() == fmnist.VIT_TEACHER
  bit_to_vit = get_config("fmnist_vit", "")
  assert bit_to_vit.student_name == "vit" and bit_to_vit.student.to_dict() == fmnist.VIT_STUDENT
  assert bit_to_vit.t1_name == "bit" and bit_to_vit.t1 == bit_c.t1
  # Everything else is fmnist_distill.py's recipe.
  for c in (vit_to_bit, bit_to_vit):
    for field in ("lr", "wd", "total_steps", "total_epochs", "mixup", "distill", "input",
                  "schedule", "optim", "evals", "seed"):
      assert c.get(field) == bit_c.get(field), field
  assert get_config("fmnist_vit", "arm=supervised").teachers == ()
  with pytest.raises(errors.ConfigError, match="student='resnet'"):
    get_config("fmnist_vit", "student=resnet")
  with pytest.raises(errors.ConfigError, match="model='cnn'"):
    get_config("fmnist_teacher", "model=cnn")


@pytest.mark.parametrize("name,arg", [
    ("fmnist_teacher", "model=vit"), ("fmnist_vit", "student=bit,teacher=vit"),
    ("fmnist_vit", "student=vit,teacher=bit"), ("fmnist_vit", "student=vit,teacher=vit"),
    ("fmnist_vit", "arm=supervised")])
def test_fmnist_vit_runlocal_builds_its_run_without_compiling(name, arg, fashion_data_dir,
                                                              tmp_path):
  config = get_config(name, f"{arg},runlocal,data_dir={fashion_data_dir}")
  config_lib.check_required(config, f"{name}:{arg}")
  # The first 100 training images: the miniature's balanced subset (its input
  # and train_dist read all 60,000 records to choose it, seconds each time) is
  # the same for every model, and the demo's runs (test_replicate) read it.
  for d in (config.input.data, *(e.data for e in config.evals.values())):
    if d.get("balanced_subset"):
      d.split, d.balanced_subset = "train[:100]", None
  for t in config.teachers:
    config[f"{t}_init"] = (
        _random_vit_file(config, t, tmp_path / f"{t}.npz") if config[f"{t}_name"] == "vit"
        else helpers.write_checkpoint(config[t].to_dict(), config.num_classes,
                                      tmp_path / f"{t}.npz"))
  run = helpers.trace_training(config)
  b = config.input.batch_size
  for m in ("student", *config.teachers):
    assert run.batch["image"][m] == jax.ShapeDtypeStruct((b, 32, 32, 3), np.float32), m
  assert (run.metrics["train/loss"].shape, run.metrics["train/loss"].dtype) == ((), np.float32)
  for ev, ec in config.evals.items():
    assert {f"{ev}/{m}" for m in helpers.eval_metrics(config, ec)} <= run.evals[ev], ev
  assert run.state["variables"]["params"]["head"]["kernel"].shape[-1] == 10
