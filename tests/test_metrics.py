"""metrics.jsonl: one row per logged step, truncated on resume, also on gs://-like stores;
and its one reader (read_metrics, series, last, best)."""

import json
import math
import subprocess
import sys

import pytest

from big_distill import metrics
from tests.helpers import write_run as _write_run


@pytest.mark.parametrize("remote", [False, True])
def test_writer_appends_and_resume_truncates(tmp_path, remote):
  # remote: the path taken for gs://, which cannot append (rewrites the file).
  workdir = str(tmp_path)
  w = metrics.Writer(workdir, append=not remote)
  for step in (1, 2, 3):
    w.write(step, {"train/loss": 1.0 / step, "x": float("nan")})
  w.close()
  path = f"{workdir}/metrics.jsonl"
  with open(path, "a") as f:
    f.write('{"step": 4, "train/lo')  # A line torn by a kill.
  rows = [json.loads(l) for l in metrics.gfile.GFile(path).read().splitlines()
          if l.endswith("}")]
  assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["x"] == "nan"
  w = metrics.Writer(workdir, resume_step=2, append=not remote)  # Resumed from a checkpoint at step 2.
  w.write(3, {"train/loss": 0.5})
  w.close()
  rows = [json.loads(l) for l in metrics.gfile.GFile(path).read().splitlines()]
  assert [(r["step"], r["train/loss"]) for r in rows] == [(1, 1.0), (2, 0.5), (3, 0.5)]


@pytest.mark.parametrize("remote", [False, True])
def test_a_full_disk_while_writing_metrics_is_one_clear_error(tmp_path, monkeypatch, remote):
  import errno  # pylint: disable=g-import-not-at-top
  from big_distill import checkpoint  # pylint: disable=g-import-not-at-top
  w = metrics.Writer(str(tmp_path), append=not remote)
  w.write(1, {"train/loss": 1.0})

  def full(*_, **__):
    raise OSError(errno.ENOSPC, "No space left on device")
  if remote:
    monkeypatch.setattr(metrics, "_write_lines", full)
  else:
    monkeypatch.setattr(w, "_file", type("Full", (), {"write": full, "close": full})())
  with pytest.raises(checkpoint.DiskFullError) as e:
    w.write(2, {"train/loss": 0.5})
  assert e.value.errno == errno.ENOSPC
  assert str(e.value).startswith(f"No space left on device while writing the metrics of step 2 "
                                 f"to {tmp_path} ")
  assert "rerun the same command to resume" in str(e.value)
  w.close()  # Quietly: what is buffered cannot be written.
  # Another failure is a bug, not a full disk: its own traceback.
  w = metrics.Writer(str(tmp_path / "b"), append=True)
  monkeypatch.setattr(w, "_file", type("Bad", (), {"write": lambda *_: 1 / 0})())
  with pytest.raises(ZeroDivisionError):
    w.write(1, {"train/loss": 1.0})


def test_progress_reports_rates():
  p = metrics.Progress(total_steps=100, batch_size=8, steps_per_epoch=10, start_step=0)
  out = p.measure(10)
  assert out["progress/epoch"] == 1.0
  assert out["progress/steps_per_sec"] > 0 and out["progress/eta_hours"] > 0
  assert out["progress/img_per_sec_per_device"] == pytest.approx(
      out["progress/steps_per_sec"] * 8 / p.devices)


# ---- The reader ------------------------------------------------------------------

def test_read_metrics_skips_broken_lines_and_resumed_steps_keep_last(tmp_path, capsys):
  # A run resumed after a kill appends to the truncated line, and repeats step 20.
  _write_run(tmp_path / "r", 2, extra_lines=[
      '{"step": 20, "epoch": 2.0, "train/l{"step": 20, "epoch": 2.0, "train/loss": 7.0}',
      '{"step": 20, "epoch": 2.0, "train/loss": 0.5}', "[1, 2]",
      '{"step": 30, "epoch": 3.0, "train/loss": "NaN", "test/student_top1": true}'])
  rows = metrics.read_metrics(str(tmp_path / "r"))
  assert "skipped 3 unreadable line(s)" in capsys.readouterr().out
  xs, ys = metrics.series(rows, "train/loss")
  assert xs == [1.0, 2.0, 3.0] and ys[:2] == [2.0, 0.5] and math.isnan(ys[2])
  assert metrics.series(rows, "train/loss", x="step")[0] == [10, 20, 30]
  assert metrics.series(rows, "test/student_top1") == ([], [])  # Not a number.
  assert metrics.series(rows, "nothing") == ([], [])


def test_last_best_and_missing(tmp_path, capsys):
  rows = [{"step": 1, "val/student_top1": 0.5, "val/student_loss": 2.0},
          {"step": 3, "val/student_top1": 0.7, "val/student_loss": 1.0},
          {"step": 2, "val/student_top1": 0.9, "val/student_loss": "nan"},
          {"step": 3, "val/student_top1": 0.6}]  # Step 3 again (a resume): the repeat counts.
  assert metrics.last(rows, "val/student_top1") == 0.6
  assert metrics.best(rows, "val/student_top1") == 0.9
  assert metrics.best(rows, "val/student_loss") == 1.0  # Lower is better; nan ignored.
  assert metrics.last(rows, "nothing") is None and metrics.best(rows, "nothing") is None
  assert [metrics.lower_is_better(k) for k in (
      "val/t1_kl", "test_cal/student_ece", "train/t1_loss", "val/student_top1",
      "dist/t1_agree_top1")] == [True, True, True, False, False]
  assert metrics.read_metrics(str(tmp_path / "none"), missing_ok=True) == []
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    metrics.read_metrics(str(tmp_path / "none"))


def test_reading_imports_neither_jax_nor_tensorflow(tmp_path):
  _write_run(tmp_path / "r", 2)
  code = ("import sys; from big_distill import metrics; "
          f"rows = metrics.read_metrics({str(tmp_path / 'r')!r}, quiet=True); "
          "assert rows and not {'jax', 'tensorflow'} & set(sys.modules), sorted(sys.modules)")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr
