"""evaluate.py: every metric on hand-made logits, checks of an evaluator's config.

Logits are the logs of chosen weights, so every probability is a fraction
worked out by hand below (not by calling the code under test).
"""

import json
import logging
import math
import os
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from big_distill import config_lib
from big_distill import errors
from big_distill import evaluate
from big_distill import evaluators
from big_distill import train
from tests import helpers
from tests import tiny_config
# (autouse) A persistent cache: every evaluate call after the trainer's own
# evaluators reads their compiled steps back instead of compiling them again.
from tests.helpers import fast_compiles  # pylint: disable=unused-import

CONFIG = os.path.join(os.path.dirname(__file__), "tiny_config.py")

# Softmax(log w) = w / sum(w). Five real examples and one padding row.
WEIGHTS = [
    [6, 1, 1, 1, 1, 1],      # label 0: p = 6/11, right.
    [1, 8, 2, 4, 3, 0.5],    # label 0: p(0) = 1/18.5; top-5 = classes 1,3,4,2,0: in it.
    [1, 8, 2, 4, 3, 0.5],    # label 5: p(5) = 0.5/18.5; not in the top 5.
    [1, 1, 1, 1, 1, 45],     # label 5: p = 45/50 = 0.9, right.
    [1, 1, 1, 1, 1, 1],      # padding (mask 0): must not count.
]
LABELS = [0, 0, 5, 5, 3]
MASK = [1, 1, 1, 1, 0]


def batch():
  return {"label": jnp.asarray(LABELS, jnp.int32), "_mask": jnp.asarray(MASK, jnp.float32)}


def logits():
  return jnp.log(jnp.asarray(WEIGHTS, jnp.float32))


def test_classification_by_hand():
  got = evaluators.batch_metrics("classification", {"student": logits()}, batch())
  assert got["student_top1"] == pytest.approx(2 / 4)
  assert got["student_top5"] == pytest.approx(3 / 4)
  loss = (math.log(11 / 6) + math.log(18.5) + math.log(37) + math.log(50 / 45)) / 4
  assert got["student_loss"] == pytest.approx(loss, rel=1e-6)


def test_top5_with_fewer_than_five_classes_is_top_k():
  two = {"student": jnp.log(jnp.asarray([[1.0, 3.0], [3.0, 1.0]]))}
  b = {"label": jnp.asarray([0, 0]), "_mask": jnp.ones(2)}
  got = evaluators.batch_metrics("classification", two, b)
  assert (got["student_top1"], got["student_top5"]) == (0.5, 1.0)


def test_calibration_by_hand():
  # 4 bins of confidence: [0, .25) [.25, .5) [.5, .75) [.75, 1]. Confidences
  # 6/11 (bin 2, right), 8/18.5 twice (bin 1, wrong), 0.9 (bin 3, right):
  # ECE = (|2 * 8/18.5 - 0| + |6/11 - 1| + |0.9 - 1|) / 4.
  got = evaluators.batch_metrics("calibration", {"student": logits()}, batch(), bins=4)
  ece = (2 * 8 / 18.5 + 5 / 11 + 0.1) / 4
  assert got["student_ece"] == pytest.approx(ece, rel=1e-6)
  assert got["student_confidence"] == pytest.approx((6 / 11 + 2 * 8 / 18.5 + 0.9) / 4, rel=1e-6)
  # With one bin ECE is |mean confidence - accuracy|.
  one = evaluators.batch_metrics("calibration", {"student": logits()}, batch(), bins=1)
  assert one["student_ece"] == pytest.approx(abs(got["student_confidence"] - 0.5), rel=1e-6)


def test_distance_by_hand():
  student = logits()
  # Example 0: the teacher is the student shifted by 2 (same softmax): KL 0,
  # euclidean 2 * sqrt(6), same top-1. Example 1: the teacher's top-1 is class
  # 5, the student's last. Others: equal logits.
  teacher = student.at[0].add(2.0).at[1].set(jnp.log(jnp.asarray([1, 1, 1, 1, 1, 3.0])))
  got = evaluators.batch_metrics("distance", {"student": student, "t1": teacher}, batch(),
                               teachers=("t1",))
  assert got["t1_agree_top1"] == pytest.approx(3 / 4)
  assert got["t1_agree_top5"] == pytest.approx(3 / 4)
  # Example 1: q = (1,1,1,1,1,3)/8, p = (1,8,2,4,3,0.5)/18.5.
  q = np.array([1, 1, 1, 1, 1, 3]) / 8
  p = np.array([1, 8, 2, 4, 3, 0.5]) / 18.5
  assert got["t1_kl"] == pytest.approx(np.sum(q * np.log(q / p)) / 4, rel=1e-5)
  d1 = np.linalg.norm(np.log([1, 1, 1, 1, 1, 3.0]) - np.log([1, 8, 2, 4, 3, 0.5]))
  assert got["t1_euclidean"] == pytest.approx((2 * math.sqrt(6) + d1) / 4, rel=1e-5)


def _config(**evals):
  c = config_lib.base()
  for name, fields in evals.items():
    c.evals[name] = config_lib.eval_config()
    c.evals[name].update(fields)
  return c


def test_models_of_an_eval():
  c = _config(a=dict(models="all"), b=dict(models="student"), d=dict(type="distance",
                                                                    models="student"))
  assert evaluators.eval_models(c, "a") == ("student", "t1")
  assert evaluators.eval_models(c, "b") == ("student",)
  assert evaluators.eval_models(c, "d") == ("student", "t1")  # Distances need both.


@pytest.mark.parametrize("fields,config_change,match", [
    (dict(type="accuracy"), {}, r"config.evals.e.type='accuracy': must be one of"),
    (dict(type="distance"), dict(teachers=()), r"'distance' eval, which needs teachers"),
    (dict(models="student,t9"), {}, r"unknown models \['t9'\]; known: student, t1"),
    (dict(pp="decode|centre_crop(4)"), {}, r"config.evals.e.pp: Unknown pp op 'centre_crop'"),
])
def test_bad_eval_config_is_one_config_error(fields, config_change, match):
  c = _config(e=fields)
  c.update(config_change)
  with pytest.raises(errors.ConfigError, match=match):
    evaluators.check_eval(c, "e")


def test_period_in_any_unit():
  c = _config(e=dict(log_epochs=2.0))
  assert evaluators.period(c, "e", num_examples=1000, batch_size=100, total_steps=50) == 20
  c = _config(e=dict(log_steps=-1))
  assert evaluators.period(c, "e", num_examples=1000, batch_size=100, total_steps=50) == 50
  c = _config(e={})
  assert evaluators.period(c, "e", num_examples=1000, batch_size=100, total_steps=50) == 50


# ---- The command: a trained checkpoint gives what the trainer logged ----------


@pytest.fixture(scope="module")
def trained(shared_folder, fashion_data_dir):
  """A finished tiny distillation: (workdir, its last logged metrics, config arg).
  Trained once per session for both xdist workers; read-only (tests write
  their outputs elsewhere)."""
  def arg(path):
    # The first 160 training images: the default balanced subset of 1020 reads
    # all 60,000 training records (~13 CPU-s); what is evaluated is test[:64].
    return (f"data_dir={fashion_data_dir},teacher={path / 'teacher.npz'},steps=4,ckpt=4,"
            "log=4,split=train[:160],subset=0")

  def build(path):
    shutil.rmtree(path / "run", ignore_errors=True)  # A build that failed midway.
    tiny_config.write_teacher(path / "teacher.npz")
    last = train.train(tiny_config.get_config(arg(path)), str(path / "run"))
    (path / "last.json").write_text(json.dumps({k: float(v) for k, v in last.items()}))
  path = shared_folder("evaluate_trained", build)
  return path / "run", json.loads((path / "last.json").read_text()), arg(path)


def _evaluate(arg, init, monkeypatch, capsys, *flags_):
  helpers.run_main(evaluate, ["evaluate", f"--config={CONFIG}:{arg}", f"--init={init}",
                              *flags_], monkeypatch)
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_evaluate_gives_exactly_what_the_trainer_logged(trained, monkeypatch, capsys, tmp_path):
  workdir, last, arg = trained
  names = [k for k in last if k.startswith(("test/", "dist/"))]
  assert "test/student_top1" in names and "dist/t1_agree_top1" in names
  # The exported student.npz, and the workdir (which holds it).
  for init in (workdir / "student.npz", workdir):
    out = _evaluate(arg, init, monkeypatch, capsys, f"--workdir={tmp_path}")
    assert out["weights"] == str(workdir / "student.npz")
    assert {k: out["metrics"][k] for k in names} == {k: last[k] for k in names}
  written = json.loads((tmp_path / "evaluate_student.npz.json").read_text())
  assert written["metrics"] == out["metrics"]
  # A workdir without student.npz: its newest orbax checkpoint (the same step).
  bare = tmp_path / "bare"
  shutil.copytree(workdir / "checkpoints", bare / "checkpoints")
  out = _evaluate(arg, bare, monkeypatch, capsys)
  assert out["weights"] == f"{bare / 'checkpoints'} step 4"
  assert {k: out["metrics"][k] for k in names} == {k: last[k] for k in names}
  assert (bare / "evaluate_bare.json").exists()  # Beside the run, by default.


def test_without_init_the_teachers_alone(trained, monkeypatch, capsys, tmp_path):
  _, last, arg = trained
  helpers.run_main(evaluate, ["evaluate", f"--config={CONFIG}:{arg}", f"--workdir={tmp_path}"],
                   monkeypatch)
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["weights"] == "teachers only"
  assert set(out["metrics"]) == {"test/t1_top1", "test/t1_top5", "test/t1_loss"}
  assert out["metrics"] == {k: last[k] for k in out["metrics"]}
  assert (tmp_path / "evaluate_teachers.json").exists()


@pytest.mark.parametrize("make,match", [
    (lambda p: p / "missing.npz", r"--init=\S*missing.npz does not exist"),
    (lambda p: p, r"--init=\S+ is a directory with neither student.npz nor checkpoints/"),
    (lambda p: helpers.write_random_bit(p / "five.npz", 5),
     r"Checkpoint '\S+five.npz' has a head for 5 classes, the model has num_classes=10"),
    (lambda p: helpers.write_random_bit(p / "wide.npz", 10, width=0.25),
     r"Checkpoint '\S*wide.npz' \(BiT release layout\) does not match the model"),
])
def test_bad_init_is_one_line(trained, monkeypatch, capsys, tmp_path, make, match):
  _, _, arg = trained
  init = make(tmp_path)
  with pytest.raises(SystemExit) as e:
    _evaluate(arg, init, monkeypatch, capsys)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert re.search("big_distill.evaluate: error: " + match, err), err
  assert "Traceback" not in err


def test_evaluators_of_one_type_share_their_compiled_step(trained, caplog):
  """`val` and `test` (both classification, batches of one shape) compile one
  program per model set between them; the distance evaluator its own."""
  import jax  # pylint: disable=g-import-not-at-top
  workdir, last, arg = trained
  config = tiny_config.get_config(arg)
  with config.unlocked():
    config.evals.val = config.evals.test.copy_and_resolve_references()
  config.lock()
  with caplog.at_level(logging.WARNING), jax.log_compiles():
    out = evaluate.evaluate_checkpoint(config, str(workdir / "student.npz"))
  compiles = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("Compiling jit(step)")]
  # (student), (t1) for both classification evaluators, (student, t1) for dist.
  assert len(compiles) == 3, [c[:100] for c in compiles]
  metrics = out["metrics"]
  for k in ("student_top1", "student_loss", "t1_top1", "t1_loss"):
    assert metrics[f"val/{k}"] == metrics[f"test/{k}"] == last[f"test/{k}"], k
  assert metrics["dist/t1_agree_top1"] == last["dist/t1_agree_top1"]
