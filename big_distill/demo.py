r"""The offline demo: a teacher, then a student by function matching on 1,020 images.

    python -m big_distill.demo [--scale=1] [--workdir=workdirs/demo]

1. prepares Fashion-MNIST (TFDS, or the Debian package when offline);
2. trains a BiT teacher with labels on all 60,000 training images
   (configs/fmnist_teacher.py) with `python -m big_distill.train`;
3. distils a 4x smaller BiT student from it by function matching on a fixed,
   class-balanced 1,020-image subset (configs/fmnist_distill.py);
4. prints a table (teacher and student test accuracy, their top-1 agreement,
   training images/s) and plots the student's test accuracy and distance to
   the teacher over training.

`--scale` multiplies the teacher's and the student's epochs (1: about 10
minutes on 2 CPU cores; on a GPU use e.g. --scale=20 for ~93% teacher).
Every step is an ordinary `big_distill.train` command, printed before it
runs, so each can be rerun or changed by hand; rerunning the demo resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app
from absl import flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # The configs/ folder of this checkout.
_SCALE = flags.DEFINE_float("scale", 1.0, "Multiplier of both runs' epochs.")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "Where both runs go.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS').")

TEACHER_EPOCHS = 1.5
STUDENT_EPOCHS = 100


def last_value(workdir: str, key: str):
  value = None
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if key in row:
        value = row[key]
  return value


def mean_rate(workdir: str) -> float:
  """Training images/s: mean steps/s after the first log (compile) x batch."""
  rates = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "progress/steps_per_sec" in row:
        rates.append(row["progress/steps_per_sec"])
  with open(os.path.join(workdir, "config.json")) as f:
    batch = json.load(f)["input"]["batch_size"]
  rates = rates[1:] or rates
  return sum(rates) / max(len(rates), 1) * batch


def run(cmd: list[str]) -> None:
  print("\n$ " + " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, cwd=REPO)


def main(argv):
  del argv
  from big_distill import plotting  # pylint: disable=g-import-not-at-top
  from big_distill.data import input as input_lib  # pylint: disable=g-import-not-at-top
  from big_distill.data import prepare  # pylint: disable=g-import-not-at-top
  from configs import fmnist_teacher  # pylint: disable=g-import-not-at-top

  start = time.time()
  data_dir = _DATA_DIR.value or ""
  try:
    input_lib.check_prepared(fmnist_teacher.data("train", data_dir or None))
  except input_lib.DataNotPreparedError:
    print("Preparing Fashion-MNIST ...", flush=True)
    prepare.prepare_fashion_mnist(data_dir or None)

  root = Path(_WORKDIR.value)
  if not root.is_absolute():
    root = REPO / root
  teacher, student = str(root / "teacher"), str(root / "student")
  py = sys.executable
  t_epochs = TEACHER_EPOCHS * _SCALE.value
  s_epochs = STUDENT_EPOCHS * _SCALE.value
  dd = f",data_dir={data_dir}" if data_dir else ""
  t0 = time.time()
  run([py, "-m", "big_distill.train",
       f"--config=configs/fmnist_teacher.py:epochs={t_epochs:g}{dd}", f"--workdir={teacher}"])
  t1 = time.time()
  run([py, "-m", "big_distill.train",
       f"--config=configs/fmnist_distill.py:epochs={s_epochs:g}{dd}",
       f"--config.t1_init={teacher}", f"--workdir={student}"])
  t2 = time.time()

  figures = plotting.plot([student], str(root))
  rows = [
      ("teacher test accuracy (60,000 train images)", f"{last_value(teacher, 'test/student_top1'):.2%}"),
      ("student test accuracy (1,020 train images)", f"{last_value(student, 'test/student_top1'):.2%}"),
      ("student-teacher top-1 agreement (test)", f"{last_value(student, 'dist_test/t1_agree_top1'):.2%}"),
      ("student-teacher KL (test)", f"{last_value(student, 'dist_test/t1_kl'):.4f}"),
      ("teacher training images/s", f"{mean_rate(teacher):.0f}"),
      ("student distillation images/s", f"{mean_rate(student):.0f}"),
      ("teacher / student wall time", f"{t1 - t0:.0f} s / {t2 - t1:.0f} s"),
      ("total wall time", f"{time.time() - start:.0f} s"),
  ]
  width = max(len(k) for k, _ in rows)
  print("\nbig_distill demo: Fashion-MNIST, function matching on 1,020 images")
  print(f"  teacher: BiT R26x0.25, {t_epochs:g} epochs; student: BiT R26x0.125, "
        f"{s_epochs:g} epochs of the subset")
  print("-" * (width + 14))
  for k, v in rows:
    print(f"{k:<{width}}  {v:>10}")
  print("-" * (width + 14))
  for f in figures:
    print(f"figure: {f}")


if __name__ == "__main__":
  app.run(main)
