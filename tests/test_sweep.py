"""big_distill.sweep: grid expansion, names, skip/resume, SLURM, collect and selection.

Fast: no training. Runs are faked by a patched subprocess.run that writes what
the trainer would (metrics.jsonl, checkpoints/, student.npz at the end), and
results come from hand-written metrics.jsonl files.
"""

import json
import os
import shlex
import subprocess

import pytest

from big_distill import sweep
from big_distill import sweep_launch
from big_distill.errors import ConfigError
from tests.helpers import sweep_cell

CONFIG = '''
from big_distill import config_lib

def get_config(arg=None):
  a = config_lib.parse_arg(arg, arm="fm", lr=0.003, seed=0, epochs=10.0)
  if a.arm not in ("fm", "fixed", "sup"):
    raise ValueError(f"Unknown arm {a.arm!r}.")
  c = config_lib.base()
  c.lr, c.seed, c.total_epochs = a.lr, a.seed, a.epochs
  return c
'''


@pytest.fixture
def config_file(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "cfg.py").write_text(CONFIG)
  return "cfg.py"


def _workdir(cmd):
  return next(c for c in cmd if c.startswith("--workdir=")).split("=", 1)[1]


# ---- The grid ----------------------------------------------------------------

def test_grid_expands_in_order_with_names_from_the_arguments():
  cells = sweep.expand("configs/x.py:epochs=300", ["arm=fm,fixed;lr=0.001,0.01;config.wd=0.1"])
  assert [c.name for c in cells] == [
      "arm=fm,epochs=300,lr=0.001,config.wd=0.1", "arm=fm,epochs=300,lr=0.01,config.wd=0.1",
      "arm=fixed,epochs=300,lr=0.001,config.wd=0.1", "arm=fixed,epochs=300,lr=0.01,config.wd=0.1"]
  cmd = cells[1].command("/r", ["--config.t1_init=/t/teacher"], "py")
  assert cmd == ["py", "-m", "big_distill.train", "--config=configs/x.py:epochs=300,arm=fm,lr=0.01",
                 "--config.t1_init=/t/teacher", "--config.wd=0.1",
                 "--workdir=/r/arm=fm,epochs=300,lr=0.01,config.wd=0.1"]
  assert cells[0].fields == {"epochs": "300", "arm": "fm", "lr": "0.001", "config.wd": "0.1"}
  assert cells[0].swept == ("arm", "lr", "config.wd")


def test_union_of_grids_keeps_a_shared_cell_once():
  # A per-arm lr is a union of grids; the (fm, 0.01) cell is made by both.
  cells = sweep.expand("x.py", ["arm=fm;lr=0.01;seed=0,1", "arm=fm,fixed;lr=0.01;seed=0"])
  assert [c.name for c in cells] == ["arm=fm,lr=0.01,seed=0", "arm=fm,lr=0.01,seed=1",
                                     "arm=fixed,lr=0.01,seed=0"]
  # The base config's arguments are part of the name, so two sweeps of the same
  # base share their cells, and a path-valued argument is named by its last part.
  (c,) = sweep.expand("x.py:teacher=/runs/t_e5/", ["seed=2"])
  assert c.name == "seed=2,teacher=t_e5"


@pytest.mark.parametrize("text, match", [
    ("lr", "not NAME=V1,V2"), ("lr=", "not NAME=V1,V2"), ("lr=1;lr=2", "twice"),
    ("--lr=1", "without the dashes"), (";", "empty")])
def test_bad_grids_are_one_clear_error(text, match):
  with pytest.raises(ConfigError, match=match):
    sweep.expand("x.py", [text])


def test_every_cell_is_checked_before_anything_runs(config_file, tmp_path, capsys):
  assert sweep.main([f"--config={config_file}", "--sweep=arm=fm,nope", f"--root={tmp_path}/r",
                     "--run"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("big_distill.sweep: error: cell arm=nope: ") and "Unknown arm 'nope'" in err
  assert not (tmp_path / "r").exists()  # Nothing ran, nothing was written.
  assert sweep.main([f"--config={config_file}", "--sweep=arm=fm", "--config.lrr=1",
                     f"--root={tmp_path}/r"]) == 2
  assert "--config.lrr: no such config field" in capsys.readouterr().err
  assert sweep.main([f"--config={config_file}", "--sweep=config.lr=fast",
                     f"--root={tmp_path}/r"]) == 2
  assert "expected a number" in capsys.readouterr().err
  assert sweep.main(["--config=nofile.py", "--sweep=a=1", f"--root={tmp_path}/r"]) == 2
  assert "no such file" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # argparse: not a --config.FIELD flag.
    sweep.main([f"--config={config_file}", "--sweep=arm=fm", "--bogus", f"--root={tmp_path}"])


def test_print_marks_finished_cells(config_file, tmp_path, capsys):
  root = tmp_path / "r"
  (root / "arm=fixed,seed=0").mkdir(parents=True)
  (root / "arm=fixed,seed=0" / "student.npz").write_bytes(b"x")
  assert sweep.main([f"--config={config_file}", "--sweep=arm=fm,fixed;seed=0",
                     f"--root={root}", "--python=py"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines == [
      f"py -m big_distill.train --config={config_file}:arm=fm,seed=0 --workdir={root}/arm=fm,seed=0",
      f"# finished: py -m big_distill.train --config={config_file}:arm=fixed,seed=0 "
      f"--workdir={root}/arm=fixed,seed=0"]
  assert sorted(os.listdir(root)) == ["arm=fixed,seed=0"]  # --print writes nothing.


# ---- Running: skip, resume, failures, preemption --------------------------------

class FakeTrainer:
  """Stands in for `python -m big_distill.train`: logs, checkpoints, then finishes.

  `fail_first`: cell names whose first attempt dies after a checkpoint (exit 1).
  """

  def __init__(self, fail_first=(), returncode=None):
    self.calls, self.fail_first, self.returncode = [], set(fail_first), returncode
    self.envs = []

  def __call__(self, cmd, check=False, env=None):
    workdir = _workdir(cmd)
    name = os.path.basename(workdir)
    self.calls.append(name)
    self.envs.append(env)
    os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
    if self.returncode is not None:
      return subprocess.CompletedProcess(cmd, self.returncode)
    if name in self.fail_first:
      self.fail_first.discard(name)
      return subprocess.CompletedProcess(cmd, 1)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 10, "val/student_top1": 0.5}) + "\n")
    with open(os.path.join(workdir, "student.npz"), "wb") as f:
      f.write(b"x")
    return subprocess.CompletedProcess(cmd, 0)


@pytest.fixture
def fake(monkeypatch):
  monkeypatch.setattr(sweep_launch, "_DEVICE", "fake-device")
  def install(**kwargs):
    trainer = FakeTrainer(**kwargs)
    monkeypatch.setattr(sweep_launch.subprocess, "run", trainer)
    return trainer
  return install


def test_run_skips_finished_and_resumes_interrupted(config_file, tmp_path, fake, capsys):
  trainer = fake(fail_first={"arm=fm,seed=1"})
  args = [f"--config={config_file}", "--sweep=arm=fm;seed=0,1", f"--root={tmp_path}/r", "--run"]
  assert sweep.main(args) == 1  # seed=1 died: reported, seed=0 still ran.
  out = capsys.readouterr().out
  assert trainer.calls == ["arm=fm,seed=0", "arm=fm,seed=1"]
  assert "# arm=fm,seed=1: FAILED (exit status 1)" in out and "# failed cells: arm=fm,seed=1" in out
  info = json.loads((tmp_path / "r" / "arm=fm,seed=1" / sweep.CELL_FILE).read_text())
  assert info["returncode"] == 1 and info["attempts"] == 1 and info["device"] == "fake-device"
  assert info["args"] == {"arm": "fm", "seed": "1"} and info["swept"] == ["arm", "seed"]
  wall_1 = info["wall_s"]

  assert sweep.main(args) == 0  # The rerun: the finished cell is skipped, the other resumed.
  out = capsys.readouterr().out
  assert trainer.calls == ["arm=fm,seed=0", "arm=fm,seed=1", "arm=fm,seed=1"]
  assert "arm=fm,seed=0: finished, skipped." in out
  assert "# [2/2] arm=fm,seed=1 (resuming)" in out
  info = json.loads((tmp_path / "r" / "arm=fm,seed=1" / sweep.CELL_FILE).read_text())
  assert info["returncode"] == 0 and info["attempts"] == 2 and info["wall_s"] >= wall_1
  assert shlex.split(info["command"])[3] == f"--config={config_file}:arm=fm,seed=1"

  assert sweep.main(args) == 0
  assert len(trainer.calls) == 3  # Everything finished: nothing runs.


def test_cells_share_a_compilation_cache(config_file, tmp_path, fake, monkeypatch):
  trainer = fake()
  monkeypatch.delenv(sweep.CACHE_ENV, raising=False)
  base = [f"--config={config_file}", "--sweep=arm=fm,fixed", "--run"]
  assert sweep.main(base + [f"--root={tmp_path}/a"]) == 0
  assert [e[sweep.CACHE_ENV] for e in trainer.envs] == [f"{tmp_path}/a/.jax_cache"] * 2
  assert trainer.envs[0]["PATH"] == os.environ["PATH"]  # The rest of the environment is kept.
  monkeypatch.setenv(sweep.CACHE_ENV, "/elsewhere")  # The caller's cache wins...
  assert sweep.main(base + [f"--root={tmp_path}/b"]) == 0
  assert trainer.envs[-1][sweep.CACHE_ENV] == "/elsewhere"
  assert sweep.main(base + [f"--root={tmp_path}/c", f"--compilation_cache={tmp_path}/j"]) == 0
  assert trainer.envs[-1][sweep.CACHE_ENV] == f"{tmp_path}/j"  # ...but not the flag,
  assert sweep.main(base + [f"--root={tmp_path}/d", "--compilation_cache=none"]) == 0
  assert sweep.CACHE_ENV not in trainer.envs[-1]  # and 'none' turns it off.
  # The cache folder is not a cell: collect skips it.
  os.makedirs(f"{tmp_path}/a/.jax_cache/jit_step")
  assert [c["name"] for c in sweep.read_cells(f"{tmp_path}/a")] == ["arm=fixed", "arm=fm"]


def test_a_cell_locked_by_another_sweep_is_skipped(config_file, tmp_path, fake, capsys):
  import fcntl  # pylint: disable=g-import-not-at-top
  trainer = fake()
  held = tmp_path / "r" / "arm=fm"
  held.mkdir(parents=True)
  with open(held / sweep.LOCK_FILE, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    assert sweep.locked(str(held)) and not sweep.locked(str(tmp_path / "r" / "arm=fixed"))
    # A second open file description of the same file: the lock excludes it.
    assert sweep.main([f"--config={config_file}", "--sweep=arm=fm,fixed",
                       f"--root={tmp_path}/r", "--run"]) == 0
  assert not sweep.locked(str(held))  # Released with its holder; the file stays.
  assert trainer.calls == ["arm=fixed"]
  assert "arm=fm: being run by another sweep, skipped." in capsys.readouterr().out


def test_preempted_cell_stops_the_sweep(config_file, tmp_path, fake):
  trainer = fake(returncode=sweep.PREEMPTED_EXIT_CODE)
  with pytest.raises(SystemExit) as e:
    sweep.main([f"--config={config_file}", "--sweep=arm=fm,fixed", f"--root={tmp_path}/r", "--run"])
  assert e.value.code == 143 and trainer.calls == ["arm=fm"]


def test_slurm_array_file(config_file, tmp_path):
  root = tmp_path / "r"
  (root / "arm=fm").mkdir(parents=True)
  (root / "arm=fm" / "student.npz").write_bytes(b"x")
  path = tmp_path / "sweep.sbatch"
  assert sweep.main([f"--config={config_file}", "--sweep=arm=fm,fixed,sup", f"--root={root}",
                     f"--slurm={path}", "--python=py", "--config.wd=0.5"]) == 0
  body = path.read_text()
  assert "#SBATCH --array=0-1\n" in body  # The finished cell is left out.
  lines = (tmp_path / "sweep.sbatch.commands").read_text().splitlines()
  assert lines == [f"py -m big_distill.train --config={config_file}:arm={a} --config.wd=0.5 "
                   f"--workdir={root}/arm={a}" for a in ("fixed", "sup")]
  assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0


# ---- Collect -----------------------------------------------------------------

def _rows(val, test, val_mid=None):
  return [{"step": 5, "train/t1_loss": 1.0},
          {"step": 5, "val/student_top1": val_mid if val_mid is not None else val - 0.1,
           "val/t1_top1": 0.9, "progress/epoch": 1.0},
          {"step": 10, "train/t1_loss": 0.5},
          {"step": 10, "val/student_top1": val, "val/t1_top1": 0.9, "test/student_top1": test,
           "test_dist/t1_kl": 0.2, "progress/epoch": 2.0}]


@pytest.fixture
def swept(tmp_path):
  """arm x lr x seed: lr 0.01 is best on validation, lr 0.001 would win on test."""
  root = tmp_path / "root"
  vals = {("fm", "0.001"): ((0.60, 0.62), (0.95, 0.96)), ("fm", "0.01"): ((0.70, 0.74), (0.80, 0.81)),
          ("fixed", "0.001"): ((0.50, 0.50), (0.51, 0.52)), ("fixed", "0.01"): ((0.40, 0.44), (0.41, 0.42))}
  for (arm, lr), (v, t) in vals.items():
    for seed in (0, 1):
      sweep_cell(root, {"arm": arm, "lr": lr, "seed": str(seed)}, _rows(v[seed], t[seed],
                                                                    val_mid=0.99 if seed else None))
  sweep_cell(root, {"arm": "fm", "lr": "0.03", "seed": "0"}, _rows(0.9, 0.9), done=False)
  (root / "not_a_cell").mkdir()
  return root


def test_collect_tables_mean_std_and_selection_on_validation(swept, tmp_path, capsys):
  out = tmp_path / "out"
  s = sweep.collect(str(swept), str(out), select_metric="val/student_top1", over=["lr"],
                    plots=["val/student_top1:lr", "val/student_top1:step"])
  assert s["fields"] == ["arm", "lr", "seed"] and s["grouped_by"] == ["arm", "lr"]
  assert s["unfinished"] == ["arm=fm,lr=0.03,seed=0"]  # Listed, but in no group.
  groups = {(g["fields"]["arm"], g["fields"]["lr"]): g for g in s["groups"]}
  assert set(groups) == {("fm", "0.001"), ("fm", "0.01"), ("fixed", "0.001"), ("fixed", "0.01")}
  st = groups[("fm", "0.01")]["metrics"]["val/student_top1"]
  assert st["n"] == 2 and st["mean"] == pytest.approx(0.72)
  assert st["std"] == pytest.approx(0.02 * 2 ** 0.5)  # Sample std (n - 1) of 0.70, 0.74.
  assert groups[("fm", "0.01")]["wall_s"] == 20.0
  # Selection reads validation only: test would have picked lr 0.001 for fm.
  picked = {ch["within"]["arm"]: ch for ch in s["selected"]}
  assert picked["fm"]["chosen"] == {"lr": "0.01"} and picked["fm"]["value"] == pytest.approx(0.72)
  assert picked["fixed"]["chosen"] == {"lr": "0.001"} and picked["fm"]["candidates"] == 2

  cells = {c["name"]: c for c in s["cells"]}
  c = cells["arm=fm,lr=0.01,seed=1"]
  assert c["final"]["val/student_top1"] == 0.74 and c["best"]["val/student_top1"] == 0.99
  assert c["best"]["train/t1_loss"] == 0.5 and c["steps"] == 10 and c["finished"]
  md = (out / "groups.md").read_text().splitlines()
  assert md[0] == ("| arm | lr | n | val/student_top1 | test/student_top1 | train/t1_loss"
                   " | test_dist/t1_kl |")
  assert "| fm | 0.01 | 2 | 72.00 ± 2.83 | 80.50 ± 0.71 | 0.5000 ± 0.0000 | 0.2000 ± 0.0000 |" in md
  # Rows sorted by field, numbers as numbers.
  assert [tuple(l.split(" | ")[:2]) for l in md[2:]] == [
      ("| fixed", "0.001"), ("| fixed", "0.01"), ("| fm", "0.001"), ("| fm", "0.01")]
  header = (out / "cells.csv").read_text().splitlines()[0].split(",")
  assert header[:7] == ["name", "arm", "lr", "seed", "finished", "steps", "wall_s"]
  assert "final:val/student_top1" in header and "best:val/student_top1" in header
  assert (out / "groups.csv").read_text().splitlines()[0].startswith("arm,lr,n,")
  assert json.loads((out / "summary.json").read_text())["selected"] == json.loads(
      json.dumps(s["selected"]))
  assert "# selected on val/student_top1 (mean of 2, among 2): lr=0.01 for arm=fm -> 0.7200" in (
      capsys.readouterr().out)
  assert [os.path.basename(p) for p in s["figures"]] == [
      "val_student_top1_vs_lr.png", "val_student_top1.png"]
  assert all(os.path.getsize(p) > 10_000 for p in s["figures"])


def test_selection_names_a_field_the_cells_so_far_share(tmp_path):
  """A selection sweep over lr x epochs that has only begun: every cell read so far
  has one lr, so lr does not vary yet; the choice still names it."""
  root = tmp_path / "r"
  sweep_cell(root, {"arm": "sup", "epochs": "10", "lr": "0.003", "seed": "0"}, _rows(0.7, 0.8))
  sweep_cell(root, {"arm": "sup", "epochs": "30", "lr": "0.003", "seed": "0"}, _rows(0.9, 0.9),
             done=False)
  s = sweep.collect(str(root), str(tmp_path / "out"), select_metric="val/student_top1",
                    over=["lr", "epochs"])
  assert s["fields"] == ["epochs"] and s["grouped_by"] == ["epochs", "lr"]
  assert [ch["chosen"] for ch in s["selected"]] == [{"lr": "0.003", "epochs": "10"}]
  assert s["selected"][0]["candidates"] == 1


def test_collect_flags_a_cell_whose_final_evaluations_are_missing(tmp_path, capsys):
  """Killed after its last checkpoint and before its last evaluations, under the old
  trainer, a cell's 'final' validation is an earlier step's: collect says so."""
  root = tmp_path / "r"
  sweep_cell(root, {"lr": "0.01"}, _rows(0.7, 0.8))  # Evaluated at its last step (10).
  sweep_cell(root, {"lr": "0.03"}, [{"step": 5, "val/student_top1": 0.75},
                               {"step": 10, "train/t1_loss": 0.4}])
  s = sweep.collect(str(root), str(tmp_path / "out"), select_metric="val/student_top1")
  assert s["stale"] == {"lr=0.03": {"val/student_top1": 5}}
  assert ("# warning: lr=0.03: ended at step 10 but last logged val/student_top1 at step 5: "
          "its final values are earlier ones.") in capsys.readouterr().out
  assert json.loads((tmp_path / "out" / "summary.json").read_text())["stale"] == s["stale"]


@pytest.mark.parametrize("metric", ["test/student_top1", "dist_test/t1_agree_top1",
                                    "test_dist/t1_kl"])
def test_selection_on_a_test_metric_is_refused(swept, tmp_path, metric, capsys):
  assert sweep.main(["collect", f"--root={swept}", f"--select={metric}",
                     f"--out={tmp_path / 'out'}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"big_distill.sweep: error: --select={metric}: a test metric.")
  assert "val/student_top1" in err and "Traceback" not in err
  assert not (tmp_path / "out").exists()  # Refused before anything was read or written.
  with pytest.raises(ConfigError, match="a test metric"):
    sweep.select([], metric, ["lr"])


def test_collect_errors(swept, tmp_path, capsys):
  assert sweep.main(["collect", f"--root={tmp_path / 'nope'}"]) == 2
  assert "no such folder" in capsys.readouterr().err
  assert sweep.main(["collect", f"--root={swept}", "--select=val/nothing",
                     f"--out={tmp_path / 'o'}"]) == 2
  assert "no cell under" in capsys.readouterr().err
  assert sweep.main(["collect", f"--root={swept}", "--plot=val/student_top1:width",
                     f"--out={tmp_path / 'o'}"]) == 2
  assert "'width' is not a field that varies" in capsys.readouterr().err
