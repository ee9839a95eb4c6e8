"""Plumbing of scripts/replicate_paper.py: commands, resume, result collection, figures.

Fast (no training): commands are checked with --dry_run, runs are faked by a
patched subprocess.run, and results come from hand-written metrics.jsonl files.
"""

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rp():
  spec = importlib.util.spec_from_file_location("replicate_paper", REPO / "scripts" / "replicate_paper.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _commands(out: str) -> list[list[str]]:
  return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("$ ")]


def _config(cmd):
  return next(c for c in cmd if c.startswith("--config="))


def _workdir(cmd):
  return next(c for c in cmd if c.startswith("--workdir=")).split("=", 1)[1]


def test_single_cell_dry_run(rp, tmp_path, capsys):
  root = tmp_path / "rep"
  assert rp.main(["--arm=funmatch", "--epochs=30", "--dry_run", f"--root={root}",
                  f"--teacher_from={tmp_path / 'none'}"]) == 0
  cmds = _commands(capsys.readouterr().out)
  # No finished teacher anywhere: the teacher is trained first (1.5 epochs).
  assert cmds[0][1:] == ["-m", "big_distill.train", "--config=configs/fmnist_teacher.py:epochs=1.5",
                         f"--workdir={root / 'teacher'}"]
  assert cmds[1][1:] == ["-m", "big_distill.train",
                         "--config=configs/fmnist_distill.py:arm=funmatch,epochs=30",
                         f"--config.t1_init={root / 'teacher'}", f"--workdir={root / 'funmatch_e30'}"]
  assert len(cmds) == 2
  assert not root.exists()  # A dry run writes nothing.


def test_teacher_copy_and_teacher_epochs(rp, tmp_path, capsys):
  src = tmp_path / "demo_teacher"
  src.mkdir()
  (src / "student.npz").write_bytes(b"x")
  root = tmp_path / "rep"
  rp.main(["--arm=shampoo", "--epochs=30", "--dry_run", f"--root={root}", f"--teacher_from={src}"])
  out = capsys.readouterr().out
  assert f"$ cp -r {src} {root / 'teacher'}" in out
  rp.main(["--arm=supervised", "--epochs=30", "--lr=0.01", "--dry_run", f"--root={root}",
           "--teacher_epochs=4", "--data_dir=/tmp/tfds"])
  cmds = _commands(capsys.readouterr().out)
  assert _config(cmds[0]) == "--config=configs/fmnist_teacher.py:epochs=4,data_dir=/tmp/tfds"
  # The supervised arm has no teacher argument and carries its own lr.
  assert _config(cmds[1]) == "--config=configs/fmnist_distill.py:arm=supervised,epochs=30,lr=0.01,data_dir=/tmp/tfds"
  assert not any(c.startswith("--config.t1_init") for c in cmds[1])
  assert _workdir(cmds[1]) == str(root / "supervised_lr0.01_e30")


def test_all_dry_run(rp, tmp_path, capsys):
  root = tmp_path / "rep"
  (root / "teacher").mkdir(parents=True)
  (root / "teacher" / "student.npz").write_bytes(b"x")
  (root / "fixed_e30").mkdir()
  (root / "fixed_e30" / "student.npz").write_bytes(b"x")  # Finished: skipped.
  rp.main(["--all", "--budgets=100,30", "--dry_run", f"--root={root}"])
  out = capsys.readouterr().out
  assert "reusing finished" in out
  assert "fixed_e30: finished, skipped" in out
  names = [Path(_workdir(c)).name for c in _commands(out)]
  assert names == [
      "supervised_lr0.001_e30", "supervised_lr0.003_e30", "supervised_lr0.01_e30",
      "independent_e30", "consistent_e30", "funmatch_e30", "shampoo_e30", "lowres_e30",
      # Dry run: no sweep result, so the 100-epoch supervised run has the default lr.
      "supervised_e100", "fixed_e100", "independent_e100", "consistent_e100",
      "funmatch_e100", "shampoo_e100", "lowres_e100"]
  rp.main(["--all", "--arms=funmatch,fixed", "--budgets=30", "--dry_run", f"--root={root}"])
  names = [Path(_workdir(c)).name for c in _commands(capsys.readouterr().out)]
  assert names == ["funmatch_e30"]


def test_bad_arguments(rp):
  with pytest.raises(SystemExit):
    rp.main(["--arm=funmatch"])
  with pytest.raises(SystemExit):
    rp.main(["--arm=nope", "--epochs=3"])
  with pytest.raises(SystemExit):
    rp.main([])


def _write_metrics(workdir: Path, rows, done=True):
  workdir.mkdir(parents=True, exist_ok=True)
  with open(workdir / "metrics.jsonl", "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
    f.write('{"step": 9, "truncated\n')  # A killed run's broken last line is skipped.
  if done:
    (workdir / "student.npz").write_bytes(b"x")


def _student_rows(acc, kl, teacher=0.8):
  return [
      {"step": 4, "train/loss": 1.0, "progress/epoch": 0.5},
      {"step": 8, "test/student_top1": acc / 2, "test/t1_top1": teacher, "dist_test/t1_agree_top1": 0.5,
       "dist_train/t1_kl": 2 * kl, "progress/epoch": 1.0},
      {"step": 16, "test/student_top1": acc, "test/t1_top1": teacher, "dist_test/t1_agree_top1": 0.9,
       "dist_train/t1_kl": kl, "progress/epoch": 2.0},
  ]


def test_collect_and_figures(rp, tmp_path):
  root = tmp_path / "rep"
  _write_metrics(root / "teacher", [{"step": 700, "test/student_top1": 0.8093, "progress/epoch": 1.5}])
  (root / "teacher" / "config.json").write_text(json.dumps({"total_epochs": 1.5, "student": {"width": 0.25}}))
  _write_metrics(root / "funmatch_e30", _student_rows(0.7, 0.1))
  (root / "funmatch_e30" / rp.RUN_INFO).write_text(json.dumps(
      {"command": "python -m big_distill.train ...", "wall_s": 12.5, "device": "cpu x1"}))
  _write_metrics(root / "fixed_e30", _student_rows(0.6, 0.01))
  _write_metrics(root / "funmatch_e100", _student_rows(0.75, 0.05), done=False)  # Unfinished.
  sup = [{"step": 16, "test/student_top1": a, "progress/epoch": 2.0} for a in (0.5,)]
  _write_metrics(root / "supervised_lr0.001_e30", sup)
  _write_metrics(root / "supervised_lr0.01_e30", [{**sup[0], "test/student_top1": 0.55}])
  (root / "notacell").mkdir()
  res_dir, fig_dir = tmp_path / "results", tmp_path / "figures"

  out = rp.collect(root, res_dir)
  assert out["teacher"]["test_top1"] == 0.8093 and out["teacher"]["epochs"] == 1.5
  t = out["table"]
  assert set(t) == {"funmatch_e30", "fixed_e30", "supervised_e30"}  # Unfinished cells stay out.
  assert t["funmatch_e30"]["test_top1"] == 0.7
  assert t["funmatch_e30"]["agree_top1_test"] == 0.9
  assert t["funmatch_e30"]["kl_train"] == 0.1
  assert t["funmatch_e30"]["teacher_top1"] == 0.8
  assert t["funmatch_e30"]["steps"] == 16
  assert t["funmatch_e30"]["wall_s"] == 12.5 and t["funmatch_e30"]["device"] == "cpu x1"
  assert t["supervised_e30"]["cell"] == "supervised_lr0.01_e30"  # The best swept lr.
  assert t["supervised_e30"]["lr"] == 0.01
  assert t["supervised_e30"]["teacher_top1"] == 0.8093  # From the teacher's own workdir.
  cells = {c["cell"]: c for c in out["cells"]}
  assert cells["funmatch_e100"]["finished"] is False
  per_cell = json.loads((res_dir / "funmatch_e30.json").read_text())
  assert per_cell["curves"]["test_top1"] == [[1.0, 0.35], [2.0, 0.7]]
  assert json.loads((res_dir / "results.json").read_text())["table"] == json.loads(json.dumps(t))

  paths = rp.figures(root, res_dir, fig_dir)
  assert sorted(Path(p).name for p in paths) == ["accuracy.png", "distance.png"]
  assert all(Path(p).stat().st_size > 1000 for p in paths)


def test_parse_cell(rp):
  assert rp.parse_cell("funmatch_e30") == ("funmatch", None, 30.0)
  assert rp.parse_cell("supervised_lr0.003_e1000") == ("supervised", 0.003, 1000.0)
  assert rp.parse_cell("supervised_lr0.003_heldout_e30") is None
  assert rp.parse_cell("teacher") is None
  assert rp.parse_cell("nope_e30") is None


def test_real_run_records_wall_time_and_resumes(rp, tmp_path, capsys, monkeypatch):
  """Without --dry_run: the command runs, its info is recorded, a rerun skips it."""
  root = tmp_path / "rep"
  (root / "teacher").mkdir(parents=True)
  (root / "teacher" / "student.npz").write_bytes(b"x")
  calls = []

  def fake_run(cmd, check, cwd):
    calls.append(cmd)
    _write_metrics(Path(_workdir(cmd)), _student_rows(0.7, 0.1))

  monkeypatch.setattr(rp.subprocess, "run", fake_run)
  monkeypatch.setattr(rp, "_DEVICE", "fake-device")
  args = ["--arm=consistent", "--epochs=3", f"--root={root}",
          f"--results_dir={tmp_path / 'res'}", f"--figures_dir={tmp_path / 'fig'}"]
  rp.main(args)
  assert len(calls) == 1
  info = json.loads((root / "consistent_e3" / rp.RUN_INFO).read_text())
  assert info["device"] == "fake-device" and info["wall_s"] >= 0
  assert "arm=consistent,epochs=3" in info["command"]
  res = json.loads((tmp_path / "res" / "results.json").read_text())
  assert res["table"]["consistent_e3"]["command"] == info["command"]
  assert (tmp_path / "fig" / "accuracy.png").exists()
  rp.main(args)
  assert len(calls) == 1  # Finished: not rerun.
  assert "consistent_e3: finished, skipped" in capsys.readouterr().out


def test_markdown_table(rp):
  res = {"table": {
      "funmatch_e30": {"epochs": 30.0, "test_top1": 0.7, "agree_top1_test": 0.9, "kl_train": 0.1, "lr": 0.003},
      "supervised_e30": {"epochs": 30.0, "test_top1": 0.55, "agree_top1_test": None, "kl_train": None, "lr": 0.01}}}
  md = rp.markdown_table(res).splitlines()
  assert md[0] == "| arm | 30 ep |"
  assert "| supervised | 55.00 (lr 0.01) |" in md
  assert "| funmatch | 70.00 / 90.00 / 0.100 |" in md
  assert "| fixed | not run |" in md


def test_failed_cell_does_not_stop_the_table(rp, tmp_path, monkeypatch):
  root = tmp_path / "rep"
  (root / "teacher").mkdir(parents=True)
  (root / "teacher" / "student.npz").write_bytes(b"x")
  calls = []

  def fake_run(cmd, check, cwd):
    calls.append(Path(_workdir(cmd)).name)
    if len(calls) == 1:
      raise rp.subprocess.CalledProcessError(2, cmd)
    _write_metrics(Path(_workdir(cmd)), _student_rows(0.7, 0.1))

  monkeypatch.setattr(rp.subprocess, "run", fake_run)
  monkeypatch.setattr(rp, "_DEVICE", "fake-device")
  monkeypatch.setattr(rp, "FAILED", [])
  rc = rp.main(["--all", "--arms=funmatch,fixed", "--budgets=3", f"--root={root}", "--no_collect"])
  assert rc == 1 and calls == ["funmatch_e3", "fixed_e3"] and rp.FAILED == ["funmatch_e3"]


def test_relative_root_becomes_absolute(rp, capsys):
  rp.main(["--arm=fixed", "--epochs=3", "--dry_run", "--root=workdirs/x", "--teacher_from="])
  cmds = _commands(capsys.readouterr().out)
  assert _workdir(cmds[-1]) == str(REPO / "workdirs" / "x" / "fixed_e3")
