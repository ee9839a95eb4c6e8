"""metrics.jsonl: one row per logged step, truncated on resume, also on gs://-like stores."""

import json

import pytest

from big_distill import metrics


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


def test_progress_reports_rates():
  p = metrics.Progress(total_steps=100, batch_size=8, steps_per_epoch=10, start_step=0)
  out = p.measure(10)
  assert out["progress/epoch"] == 1.0
  assert out["progress/steps_per_sec"] > 0 and out["progress/eta_hours"] > 0
  assert out["progress/img_per_sec_per_device"] == pytest.approx(
      out["progress/steps_per_sec"] * 8 / p.devices)
