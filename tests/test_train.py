"""The trainer end to end: distillation on a sharded mesh, supervised runs, the step."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from big_distill import checkpoint as ckpt_lib
from big_distill import config_lib
from big_distill import errors
from big_distill import train
from tests import helpers
from tests import tiny_config
# (autouse) The in-process runs compile far more than they run: a persistent
# cache, the 'unsafe_rbg' PRNG and fewer XLA optimizations took their four
# tests from 187 to 164 CPU-s (2 vCPU AMD EPYC, beside the old version). The
# subprocess run keeps its own settings.
from tests.helpers import fast_compiles  # pylint: disable=unused-import

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "tests" / "tiny_config.py")


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def series(rows, key):
  return [(r["step"], r[key]) for r in rows if key in r]


def run_cli(workdir, arg, *flags, devices=1, timeout=600):
  env = dict(os.environ, XLA_FLAGS=helpers.xla_flags(devices),
             PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "big_distill.train", f"--config={CONFIG}:{arg}",
         f"--workdir={workdir}", *flags]
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_distillation_on_data_x_fsdp_mesh(tmp_path, fashion_data_dir):
  teacher = tiny_config.write_teacher(tmp_path / "teacher.npz")
  workdir = tmp_path / "run"
  # The first 160 images (tiny_config's cheaper start): a balanced subset of
  # 1020 reads all 60,000 training records, twice, which is the supervised
  # run's below.
  arg = (f"data_dir={fashion_data_dir},teacher={teacher},steps=24,log=1,ckpt=12,fsdp=2,"
         "lr=0.003,split=train[:160],subset=0")
  r = run_cli(workdir, arg, "--config.mesh.data=4", devices=8)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "mesh {'data': 4, 'fsdp': 2}" in r.stderr
  assert "sharded over fsdp" in r.stderr and " 0 of " not in r.stderr.split("sharded over fsdp")[0][-40:]
  rows = read_metrics(workdir)
  loss = series(rows, "train/t1_loss")
  assert [s for s, _ in loss] == list(range(1, 25))
  # Batches of 16 make single steps noisy: compare averages.
  first, last = np.mean([v for _, v in loss[:2]]), np.mean([v for _, v in loss[-6:]])
  assert np.isfinite(last) and last < 0.8 * first, loss
  for key in ("train/student_entropy", "train/t1_entropy", "train/grad_norm",
              "train/param_norm", "train/update_norm", "train/lr", "train/label_loss",
              "progress/img_per_sec_per_device", "progress/epoch", "progress/eta_hours",
              "test/student_top1", "test/t1_top1", "dist/t1_kl", "dist/t1_agree_top1"):
    assert any(key in r for r in rows), key
  assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "24"]
  assert (workdir / "student.npz").exists() and (workdir / "config.json").exists()
  assert list(workdir.glob("events.out.tfevents.*"))
  # A rerun of a finished run: the supervised run's test below.


def _config(arg):
  config = tiny_config.get_config(arg)
  config.lock()
  return config


def test_supervised_run_learns_compiles_its_step_once_and_resumes(tmp_path, fashion_data_dir,
                                                                  monkeypatch, caplog):
  """On tiny_config's balanced subset of 1020 images (the one run here that
  reads it): learns; its train step compiles once in 30 steps, 3 checkpoints
  and an evaluation; a rerun of the finished run resumes at its last step."""
  workdir = str(tmp_path / "sup")
  config = _config(f"data_dir={fashion_data_dir},steps=30,log=5,ckpt=10,lr=0.01,mixup=0.0")
  # A checkpoint is started only once its step's evaluations are in
  # metrics.jsonl: a kill between the two must not resume past them.
  evaluated_at_save = {}
  save = ckpt_lib.Checkpointer.save

  def spy(self, step, state):
    evaluated_at_save[step] = [r["step"] for r in read_metrics(workdir) if "test/student_top1" in r]
    return save(self, step, state)
  monkeypatch.setattr(ckpt_lib.Checkpointer, "save", spy)
  with caplog.at_level(logging.WARNING), jax.log_compiles():
    last = train.train(config, workdir)
  compiles = [r for r in caplog.records if "Compiling jit(update)" in r.getMessage()]
  assert len(compiles) == 1, [r.getMessage()[:120] for r in compiles]
  assert evaluated_at_save == {10: [], 20: [], 30: [30]}, evaluated_at_save
  loss = series(read_metrics(workdir), "train/label_loss")
  assert loss[-1][1] < loss[0][1] - 0.3, loss
  assert "train/t1_loss" not in last and 0 <= last["test/student_top1"] <= 1
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20", "30"]
  # Rerunning a finished run resumes from its final checkpoint: nothing to do.
  evaluated_at_save.clear()
  caplog.clear()
  with caplog.at_level(logging.INFO):
    train.train(config, workdir)
  assert "Resumed from the checkpoint at step 30." in caplog.text
  assert not evaluated_at_save  # Nothing saved again.
  assert len(series(read_metrics(workdir), "train/label_loss")) == 30 // 5
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20", "30"]


@pytest.mark.parametrize("views,consistent", [("consistent", True), ("independent", False)])
def test_student_and_teacher_see_the_same_mixed_view(tmp_path, fashion_data_dir, views,
                                                     consistent):
  # A student initialised as a copy of the teacher, at the same resolution: if
  # both see the very same (cropped, flipped, mixed) image, the first
  # distillation loss is zero up to float rounding (which GroupNorm amplifies
  # on Fashion-MNIST's flat backgrounds: ~1e-5 measured), while separate crops
  # give a loss orders of magnitude larger.
  teacher = tiny_config.write_teacher(tmp_path / "t.npz", res=16)
  config = _config(f"data_dir={fashion_data_dir},teacher={teacher},student_init={teacher},"
                   f"views={views},steps=1,log=1,ckpt=1,evals=false,res=16,teacher_res=16,"
                   "mixup=1.0,split=train[:160],subset=0")
  train.train(config, str(tmp_path / "w"))
  (_, loss), = series(read_metrics(str(tmp_path / "w")), "train/t1_loss")
  if consistent:
    assert loss < 1e-4
  else:
    assert loss > 1e-2


def test_bad_configs_fail_before_compiling(tmp_path, fashion_data_dir):
  teacher = tiny_config.write_teacher(tmp_path / "t.npz")
  base = f"data_dir={fashion_data_dir},teacher={teacher}"
  cases = [
      (dict(views="paper"), "config.distill.views='paper': must be one of"),
      (dict(loss="kld"), "Unknown distillation loss 'kld'"),
      # optim.py's own message: the one place that knows the optimizers.
      (dict(optim="adamw"), "Unknown optimizer config.optim.name='adamw'; known: adam"),
      (dict(t1_init=str(tmp_path / "nope.npz")), "checkpoint .*nope.npz does not exist"),
      (dict(mesh=3), "does not fit the 1 devices"),
  ]
  for change, message in cases:
    config = tiny_config.get_config(base)
    if "views" in change:
      config.distill.views = change["views"]
    if "loss" in change:
      config.distill.loss = change["loss"]
    if "optim" in change:
      config.optim.name = change["optim"]
    if "t1_init" in change:
      config.t1_init = change["t1_init"]
    if "mesh" in change:
      config.mesh.data = change["mesh"]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      train.train(config, str(tmp_path / "w"))


# ---- The command: errors and the default workdir (train() itself stubbed) ----


@pytest.fixture
def main_with(monkeypatch):
  """train.main() on `--config=tests/tiny_config.py:...` with train() replaced."""
  def run(*args, raises=None):
    calls = []

    def fake_train(config, workdir):
      calls.append((config, workdir))
      if raises is not None:
        raise raises
    monkeypatch.setattr(train, "train", fake_train)
    helpers.run_main(train, ["train", f"--config={CONFIG}:steps=3", *args], monkeypatch)
    return calls
  return run


def test_user_errors_are_one_line_with_exit_2(main_with, capsys):
  for error in (errors.ConfigError("config.lr=-1: must be > 0."),
                errors.DataError("no data"), errors.CheckpointError("bad file"),
                errors.WorkdirError("held by another run")):
    with pytest.raises(SystemExit) as e:
      main_with("--workdir=/tmp/unused", raises=error)
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"big_distill.train: error: {error}")


def test_non_finite_loss_exits_3(main_with):
  with pytest.raises(SystemExit) as e:
    main_with("--workdir=/tmp/unused", raises=train.NonFiniteLossError("nan at step 3"))
  assert e.value.code == 3


def test_a_plain_value_error_is_a_bug_and_keeps_its_traceback(main_with):
  # Not turned into "error: ..." and exit 2: the traceback shows where the bug is.
  with pytest.raises(ValueError, match="a bug in the code"):
    main_with("--workdir=/tmp/unused", raises=ValueError("a bug in the code"))
  with pytest.raises(FileNotFoundError):
    main_with("--workdir=/tmp/unused", raises=FileNotFoundError("a bug too"))


def test_default_workdir_is_named_after_the_config(main_with, caplog, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with caplog.at_level(logging.INFO):
    (config, workdir), = main_with()
  assert workdir == os.path.join("workdirs", "tiny_config_steps_3")
  assert config.total_steps == 3
  logged = [r.getMessage() for r in caplog.records]
  assert f"Workdir: {tmp_path / 'workdirs' / 'tiny_config_steps_3'}" in logged


@pytest.mark.parametrize("arg,want", [
    ("configs/flowers_r50.py", "workdirs/flowers_r50"),
    ("configs/flowers_r50.py:variant=fast,runlocal", "workdirs/flowers_r50_variant_fast_runlocal"),
    ("/abs/repo/configs/teachers/pets.py:runlocal", "workdirs/teachers/pets_runlocal"),
    ("my.config.py:lr=0.1, x=a/b", "workdirs/my.config_lr_0.1_x_a_b"),
])
def test_default_workdir_names(arg, want):
  assert config_lib.default_workdir(arg) == want
