r"""The paper's central claims in miniature: one command per number.

Fashion-MNIST (3-channel, 32px). Teacher: BiT R26x0.25 trained with labels on
all 60,000 training images (configs/fmnist_teacher.py). Student: BiT R26x0.125
(~4x fewer FLOPs), trained only on the fixed class-balanced 1,020-image subset
(configs/fmnist_distill.py), tested on the 10,000 test images.

    # one cell of the table
    python scripts/replicate_paper.py --arm=funmatch --epochs=30
    # the whole table (arms x budgets); finished cells are skipped
    python scripts/replicate_paper.py --all --budgets=30,100
    # only print the commands
    python scripts/replicate_paper.py --all --dry_run
    # only collect docs/results/results.json and redraw docs/figures/
    python scripts/replicate_paper.py --collect

Every run is an ordinary `python -m big_distill.train` command, printed before
it runs, so it can be rerun or changed by hand. Workdirs:
`workdirs/replicate/teacher` and `workdirs/replicate/<arm>_e<epochs>` (the
supervised arm's learning-rate sweep: `supervised_lr<lr>_e<epochs>`). A cell
whose workdir holds `student.npz` is finished and is not rerun; an unfinished
one resumes from its checkpoint.

Teacher: `--teacher_epochs=N` trains one for N epochs. Without it, a finished
`workdirs/replicate/teacher` is reused; else a finished `--teacher_from`
workdir (default /tmp/demo1/teacher, the demo's 1.5-epoch teacher) is copied
there; else one is trained for 1.5 epochs.

Supervised arm: "its own best learning rate". `--sup_lrs=0.001,0.003,0.01`
sweeps it at the smallest budget of the call; the other budgets use the
learning rate picked there. There is no validation split in this setting:
`--select_on=test` (default) picks on the test images (optimistic for the
supervised baseline, i.e. it favours the arm distillation is compared to);
`--select_on=heldout` picks on train[50000:] (disjoint from the 1,020-image
subset, which is the first 102 images of each class) with extra sweep runs.

Results: per cell `docs/results/<cell>.json` and all of them in
`docs/results/results.json`: test accuracy (`test/student_top1`), top-1
agreement with the teacher on test (`dist_test/t1_agree_top1`), KL to the
teacher on the 1,020 training images (`dist_train/t1_kl`), teacher accuracy,
steps, wall time, device and the exact command. Figures: docs/figures/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = ("supervised", "fixed", "independent", "consistent", "funmatch", "shampoo", "lowres")
BUDGETS = (30, 100, 300, 1000, 3000)
SUBSET = 1020
BATCH = 128
DEFAULT_TEACHER_FROM = "/tmp/demo1/teacher"
DEFAULT_TEACHER_EPOCHS = 1.5
HELDOUT_SPLIT = "train[50000:]"
FAILED: list[str] = []  # Cells whose command failed in this invocation.
RUN_INFO = "replicate_run.json"  # Written into each workdir after its run.
KEYS = {
    "test_top1": "test/student_top1",
    "agree_top1_test": "dist_test/t1_agree_top1",
    "kl_train": "dist_train/t1_kl",
    "kl_test": "dist_test/t1_kl",
    "agree_top1_train": "dist_train/t1_agree_top1",
    "teacher_top1": "test/t1_top1",
}


# ---- Cells and commands ----------------------------------------------------

def fmt(x: float) -> str:
  return f"{x:g}"


def cell_name(arm: str, epochs: float, lr: float | None = None) -> str:
  lr_part = f"_lr{fmt(lr)}" if lr else ""
  return f"{arm}{lr_part}_e{fmt(epochs)}"


def steps_for(epochs: float) -> int:
  return max(int(round(SUBSET * epochs / BATCH)), 1)


def cell_command(arm: str, epochs: float, root: Path, *, lr: float | None = None,
                 data_dir: str = "", python: str = sys.executable,
                 extra: tuple[str, ...] = ()) -> list[str]:
  args = f"arm={arm},epochs={fmt(epochs)}"
  if lr:
    args += f",lr={fmt(lr)}"
  if data_dir:
    args += f",data_dir={data_dir}"
  cmd = [python, "-m", "big_distill.train", f"--config=configs/fmnist_distill.py:{args}"]
  if arm != "supervised":
    cmd.append(f"--config.t1_init={root / 'teacher'}")
  cmd += list(extra)
  cmd.append(f"--workdir={root / cell_name(arm, epochs, lr)}")
  return cmd


def teacher_command(epochs: float, root: Path, data_dir: str = "",
                    python: str = sys.executable) -> list[str]:
  args = f"epochs={fmt(epochs)}" + (f",data_dir={data_dir}" if data_dir else "")
  return [python, "-m", "big_distill.train", f"--config=configs/fmnist_teacher.py:{args}",
          f"--workdir={root / 'teacher'}"]


def finished(workdir: Path) -> bool:
  return (workdir / "student.npz").exists()


def show(cmd: list[str]) -> str:
  return "$ " + " ".join(shlex.quote(c) for c in cmd)


# ---- Running ---------------------------------------------------------------

_DEVICE = None


def device_string() -> str:
  """What the runs ran on, e.g. 'cpu x1 (2 cores, x86_64)'; asked of JAX once."""
  global _DEVICE
  if _DEVICE is None:
    try:
      out = subprocess.run(
          [sys.executable, "-c",
           "import jax; d = jax.devices(); print(d[0].platform, len(d), d[0].device_kind)"],
          capture_output=True, text=True, timeout=120, cwd=REPO)
      platform_, n, kind = out.stdout.strip().split(" ", 2)
    except Exception:  # pylint: disable=broad-except
      platform_, n, kind = "unknown", "?", "?"
    _DEVICE = (f"{platform_} x{n} ({kind}); host {os.cpu_count()} CPU cores "
               f"({platform.machine()})")
  return _DEVICE


def run_logged(cmd: list[str], workdir: Path, dry_run: bool) -> None:
  """Runs `cmd` (printed first) and records command, wall time, device in the workdir."""
  print(show(cmd), flush=True)
  if dry_run:
    return
  info_path = workdir / RUN_INFO
  previous = json.loads(info_path.read_text()) if info_path.exists() else {}
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  start = time.time()
  subprocess.run(cmd, check=True, cwd=REPO)
  wall = time.time() - start
  info = {
      "command": " ".join(shlex.quote(c) for c in cmd),
      # A resumed run adds the time of its earlier attempts.
      "wall_s": wall + previous.get("wall_s", 0.0),
      "attempts": previous.get("attempts", 0) + 1,
      "device": device_string(),
      "load_avg_1min_at_start": load,
      "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  workdir.mkdir(parents=True, exist_ok=True)
  info_path.write_text(json.dumps(info, indent=1) + "\n")


def ensure_teacher(args, root: Path) -> None:
  teacher = root / "teacher"
  if args.teacher_epochs:
    if finished(teacher):
      print(f"# teacher: {teacher} is finished; reusing it (delete it to retrain "
            f"for {fmt(args.teacher_epochs)} epochs).")
      return
    run_logged(teacher_command(args.teacher_epochs, root, args.data_dir), teacher, args.dry_run)
    return
  if finished(teacher):
    print(f"# teacher: reusing finished {teacher}")
    return
  src = Path(args.teacher_from) if args.teacher_from else None
  if src and finished(src):
    print(f"$ cp -r {src} {teacher}   # a finished teacher, copied to save CPU", flush=True)
    if not args.dry_run:
      root.mkdir(parents=True, exist_ok=True)
      if teacher.exists():
        shutil.rmtree(teacher)
      shutil.copytree(src, teacher)
      cfg = json.loads((teacher / "config.json").read_text())
      info = {"command": f"(copied from {src}) " + " ".join(
          teacher_command(float(cfg.get("total_epochs") or DEFAULT_TEACHER_EPOCHS), root,
                          args.data_dir)),
              "copied_from": str(src), "wall_s": None, "device": device_string()}
      (teacher / RUN_INFO).write_text(json.dumps(info, indent=1) + "\n")
    return
  run_logged(teacher_command(DEFAULT_TEACHER_EPOCHS, root, args.data_dir), teacher, args.dry_run)


def run_cell(arm: str, epochs: float, root: Path, args, lr: float | None = None,
             extra: tuple[str, ...] = (), name: str | None = None) -> Path:
  cmd = cell_command(arm, epochs, root, lr=lr, data_dir=args.data_dir, extra=extra)
  workdir = root / cell_name(arm, epochs, lr)
  if name:  # A differently named workdir (the held-out sweep).
    workdir = root / name
    cmd[-1] = f"--workdir={workdir}"
  if finished(workdir):
    print(f"# {workdir.name}: finished, skipped. ({show(cmd)[2:]})", flush=True)
    return workdir
  try:
    run_logged(cmd, workdir, args.dry_run)
  except subprocess.CalledProcessError as e:  # One failed cell does not stop the table.
    print(f"# {workdir.name}: FAILED (exit status {e.returncode}); rerun the command to resume.",
          flush=True)
    FAILED.append(workdir.name)
  return workdir


# ---- Results ---------------------------------------------------------------

def read_rows(workdir: Path) -> list[dict]:
  rows = []
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return rows
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict):
      rows.append(row)
  return rows


def last(rows: list[dict], key: str):
  value = None
  for row in rows:
    if key in row and isinstance(row[key], (int, float)):
      value = row[key]
  return value


def curve(rows: list[dict], key: str) -> list[list[float]]:
  """[[epoch, value], ...] of an eval metric, by step (a repeated step keeps its last)."""
  by_step = {}
  for row in rows:
    if key in row and isinstance(row[key], (int, float)) and "progress/epoch" in row:
      by_step[row["step"]] = [row["progress/epoch"], row[key]]
  return [by_step[s] for s in sorted(by_step)]


def parse_cell(name: str) -> tuple[str, float | None, float] | None:
  """'funmatch_e30' -> ('funmatch', None, 30.0); 'supervised_lr0.01_e30' -> (.., 0.01, 30.0)."""
  head, sep, ep = name.rpartition("_e")
  if not sep:
    return None
  try:
    epochs = float(ep)
  except ValueError:
    return None
  lr = None
  if "_lr" in head:
    head, _, lr_s = head.partition("_lr")
    try:
      lr = float(lr_s)
    except ValueError:
      return None
  if head not in ARMS:
    return None
  return head, lr, epochs


def collect_cell(workdir: Path, teacher_top1: float | None = None) -> dict | None:
  parsed = parse_cell(workdir.name)
  rows = read_rows(workdir)
  if parsed is None or not rows:
    return None
  arm, lr, epochs = parsed
  info_path = workdir / RUN_INFO
  info = json.loads(info_path.read_text()) if info_path.exists() else {}
  cfg_path = workdir / "config.json"
  cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
  out = {
      "cell": workdir.name, "arm": arm, "epochs": epochs,
      "lr": lr if lr is not None else cfg.get("lr"),
      "optimizer": (cfg.get("optim") or {}).get("name"),
      "finished": finished(workdir),
      "steps": last(rows, "step"),
      "total_steps": cfg.get("total_steps"),
      "workdir": str(workdir),
  }
  for k, key in KEYS.items():
    out[k] = last(rows, key)
  if out["teacher_top1"] is None:
    out["teacher_top1"] = teacher_top1
  out["curves"] = {k: curve(rows, KEYS[k]) for k in ("test_top1", "kl_train", "agree_top1_test")}
  out.update({k: info.get(k) for k in ("command", "wall_s", "device", "load_avg_1min_at_start",
                                        "finished_utc")})
  return out


def collect(root: Path, results_dir: Path, select_on: str = "test") -> dict:
  """Per-cell JSONs and results.json from every workdir under `root`."""
  results_dir.mkdir(parents=True, exist_ok=True)
  teacher = root / "teacher"
  t_rows = read_rows(teacher)
  t_info = json.loads((teacher / RUN_INFO).read_text()) if (teacher / RUN_INFO).exists() else {}
  t_cfg = json.loads((teacher / "config.json").read_text()) if (teacher / "config.json").exists() else {}
  teacher_res = {
      "test_top1": last(t_rows, "test/student_top1"),
      "epochs": t_cfg.get("total_epochs"),
      "steps": last(t_rows, "step"),
      "model": t_cfg.get("student"),
      "finished": finished(teacher),
      **{k: t_info.get(k) for k in ("command", "wall_s", "device", "copied_from")},
  }
  cells = []
  for wd in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
    c = collect_cell(wd, teacher_res["test_top1"])
    if c is not None:
      cells.append(c)
      (results_dir / f"{wd.name}.json").write_text(json.dumps(c, indent=1) + "\n")
  # The supervised arm's table entry: its best swept learning rate per budget.
  table = {}
  for c in cells:
    if not c["finished"]:
      continue
    key = f"{c['arm']}_e{fmt(c['epochs'])}"
    if c["arm"] == "supervised":
      best = table.get(key)
      if best is None or (c["test_top1"] or 0) > (best["test_top1"] or 0):
        table[key] = c
    elif c["cell"] == key:
      table[key] = c
  out = {
      "setting": "Fashion-MNIST 32px RGB; teacher BiT R26x0.25 on 60k; student BiT R26x0.125 "
                 "on the class-balanced 1,020-image subset; test = 10,000 test images",
      "supervised_lr_selected_on": select_on,
      "teacher": teacher_res,
      "table": {k: {kk: v[kk] for kk in ("cell", "arm", "epochs", "lr", "steps", "test_top1",
                                          "agree_top1_test", "kl_train", "teacher_top1",
                                          "wall_s", "device", "command")}
                for k, v in sorted(table.items())},
      "cells": [{k: v for k, v in c.items() if k != "curves"} for c in cells],
  }
  (results_dir / "results.json").write_text(json.dumps(out, indent=1) + "\n")
  print(f"# wrote {results_dir / 'results.json'} ({len(cells)} cells)")
  print(markdown_table(out))
  return out


def markdown_table(res: dict) -> str:
  """Arms x budgets: test top-1 (agreement, train KL) of the finished table cells."""
  table = res["table"]
  budgets = sorted({v["epochs"] for v in table.values()})
  pct = lambda x: "-" if x is None else f"{100 * x:.2f}"
  lines = ["| arm | " + " | ".join(f"{fmt(b)} ep" for b in budgets) + " |",
           "|---|" + "---|" * len(budgets)]
  for arm in ARMS:
    cells = []
    for b in budgets:
      v = table.get(f"{arm}_e{fmt(b)}")
      if v is None:
        cells.append("not run")
      elif arm == "supervised":
        cells.append(f"{pct(v['test_top1'])} (lr {fmt(v['lr'])})")
      else:
        kl = "-" if v["kl_train"] is None else f"{v['kl_train']:.3f}"
        cells.append(f"{pct(v['test_top1'])} / {pct(v['agree_top1_test'])} / {kl}")
    lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


# ---- Figures ---------------------------------------------------------------

def figures(root: Path, results_dir: Path, fig_dir: Path) -> list[str]:
  """accuracy.png and distance.png in the paper's style, from the per-cell JSONs."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  res = json.loads((results_dir / "results.json").read_text())
  cells = [json.loads((results_dir / f"{c['cell']}.json").read_text()) for c in res["cells"]]
  chosen = {v["cell"] for v in res["table"].values()}
  cells = [c for c in cells if c["cell"] in chosen]
  teacher = res["teacher"]["test_top1"]
  fig_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for name, key, ylabel, logy in (
      ("accuracy", "test_top1", "student test top-1 (10,000 images)", False),
      ("distance", "kl_train", "KL(teacher || student) on the 1,020 train images", True)):
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, arm in enumerate(ARMS):
      mine = sorted((c for c in cells if c["arm"] == arm and c.get(key) is not None),
                    key=lambda c: c["epochs"])
      if not mine:
        continue
      color = f"C{i}"
      ax1.plot([c["epochs"] for c in mine], [c[key] for c in mine], "o-", color=color, label=arm)
      for j, c in enumerate(mine):
        xs, ys = zip(*c["curves"][key]) if c["curves"][key] else ((), ())
        ax2.plot(xs, ys, "-" if j == len(mine) - 1 else ":", color=color,
                 label=f"{arm} ({fmt(c['epochs'])} ep)", marker=".")
    if key == "test_top1" and teacher is not None:
      for ax in (ax1, ax2):
        ax.axhline(teacher, color="k", ls="--", lw=1.2, label=f"teacher ({teacher:.2%})")
    for ax in (ax1, ax2):
      ax.set_ylabel(ylabel)
      ax.grid(True, alpha=0.3)
      if logy:
        ax.set_yscale("log")
      ax.legend(fontsize="x-small", ncol=2)
    ax1.set_xscale("log")
    ax1.set_xlabel("training budget (epochs of the 1,020 images)")
    ax1.set_title("end of training, per budget")
    ax2.set_xlabel("epoch")
    ax2.set_title("during training (every run)")
    path = fig_dir / f"{name}.png"
    fig.savefig(path, dpi=110)
    paths.append(str(path))
  print("# figures: " + ", ".join(paths))
  return paths


# ---- CLI -------------------------------------------------------------------

def floats(s: str) -> list[float]:
  return [float(x) for x in s.split(",") if x.strip()]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--arm", choices=ARMS, help="One cell: this arm ...")
  p.add_argument("--epochs", type=float, help="... at this budget (epochs of the 1,020 images).")
  p.add_argument("--lr", type=float, default=None, help="Learning rate of a single cell "
                 "(default: the config's per-arm default).")
  p.add_argument("--all", action="store_true", help="Every arm at every --budgets.")
  p.add_argument("--arms", default=",".join(ARMS), help="Arms of --all.")
  p.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="Budgets of --all.")
  p.add_argument("--sup_lrs", default="0.001,0.003,0.01",
                 help="Supervised learning rates swept at the smallest budget ('' : no sweep).")
  p.add_argument("--select_on", choices=("test", "heldout"), default="test",
                 help="Where the supervised learning rate is picked (see the docstring).")
  p.add_argument("--teacher_epochs", type=float, default=0.0,
                 help="Train the teacher for this many epochs (0: reuse or copy one).")
  p.add_argument("--teacher_from", default=DEFAULT_TEACHER_FROM,
                 help="A finished teacher workdir to copy when none is there.")
  p.add_argument("--root", default="workdirs/replicate", help="Where the workdirs go.")
  p.add_argument("--data_dir", default="", help="TFDS data_dir (default: TFDS').")
  p.add_argument("--results_dir", default="docs/results")
  p.add_argument("--figures_dir", default="docs/figures")
  p.add_argument("--dry_run", action="store_true", help="Print the commands only.")
  p.add_argument("--collect", action="store_true", help="Only collect results and draw figures.")
  p.add_argument("--no_collect", action="store_true", help="Do not collect/draw after running.")
  args = p.parse_args(argv)
  if not (args.all or args.collect or args.arm):
    p.error("give --arm=ARM --epochs=N, --all, or --collect")
  if args.arm and args.epochs is None:
    p.error("--arm needs --epochs")
  return args


def absolute(path: str) -> Path:
  """An absolute path: relative ones are relative to the repository.

  Absolute because big_distill.train's orbax checkpointing rejects a relative
  --workdir ("Checkpoint path should be absolute") at its first checkpoint.
  """
  q = Path(path)
  return q if q.is_absolute() else REPO / q


def supervised_sweep(epochs: float, root: Path, args) -> float | None:
  """Runs the supervised learning-rate sweep at `epochs`; returns the picked lr."""
  lrs = floats(args.sup_lrs)
  if not lrs:
    return None
  scores = {}
  for lr in lrs:
    if args.select_on == "heldout":
      name = f"supervised_lr{fmt(lr)}_heldout_e{fmt(epochs)}"
      wd = run_cell("supervised", epochs, root, args, lr=lr, name=name,
                    extra=(f"--config.evals.test.data.split={HELDOUT_SPLIT}",))
    else:
      wd = run_cell("supervised", epochs, root, args, lr=lr)
    scores[lr] = last(read_rows(wd), "test/student_top1") if not args.dry_run else None
  if args.select_on == "heldout":  # The picked learning rate, then on test.
    pass
  known = {k: v for k, v in scores.items() if v is not None}
  if not known:
    return None
  best = max(known, key=known.get)
  print(f"# supervised lr sweep at {fmt(epochs)} epochs ({args.select_on}): "
        + ", ".join(f"{fmt(k)}: {v:.4f}" for k, v in known.items()) + f" -> {fmt(best)}")
  if args.select_on == "heldout":
    run_cell("supervised", epochs, root, args, lr=best)
  return best


def main(argv=None) -> int:
  args = parse_args(argv)
  os.chdir(REPO)
  root = absolute(args.root)
  results_dir, fig_dir = absolute(args.results_dir), absolute(args.figures_dir)
  if not args.collect:
    ensure_teacher(args, root)
    if args.all:
      arms = [a for a in args.arms.split(",") if a]
      for a in arms:
        if a not in ARMS:
          raise SystemExit(f"unknown arm {a!r}; choose from {', '.join(ARMS)}")
      budgets = sorted(floats(args.budgets))
      sup_lr = None
      for epochs in budgets:  # Budget by budget: the short ones finish first.
        for arm in arms:
          if arm == "supervised":
            if epochs == budgets[0] and floats(args.sup_lrs):
              sup_lr = supervised_sweep(epochs, root, args)
            else:
              run_cell(arm, epochs, root, args, lr=sup_lr)
          else:
            run_cell(arm, epochs, root, args)
    else:
      run_cell(args.arm, args.epochs, root, args, lr=args.lr)
  if args.dry_run or args.no_collect:
    return 1 if FAILED else 0
  if root.exists():
    collect(root, results_dir, args.select_on)
    try:
      figures(root, results_dir, fig_dir)
    except Exception as e:  # pylint: disable=broad-except
      print(f"note: figures not drawn: {e!r}")
  if FAILED:
    print("# failed cells: " + ", ".join(FAILED))
  return 1 if FAILED else 0


if __name__ == "__main__":
  sys.exit(main())
