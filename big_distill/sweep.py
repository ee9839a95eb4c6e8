r"""Sweeps: a grid of ordinary `big_distill.train` runs, and one table of their results.

    # the commands of a grid (for any scheduler)
    python -m big_distill.sweep --config=configs/fmnist_distill.py:images=100,epochs=300 \
        --sweep='arm=funmatch,fixed;lr=0.001,0.003,0.01,0.03' --root=$HOME/bd_runs/sel \
        --config.t1_init=$HOME/bd_runs/fmnist/teacher_e30 --print
    # run them one after another; rerun to resume (finished cells are skipped)
    python -m big_distill.sweep ... --run
    # a SLURM array job, one cell per task
    python -m big_distill.sweep ... --slurm=sweep.sbatch
    # one table of every cell, mean +- std over seeds, the lr chosen on validation
    python -m big_distill.sweep collect --root=$HOME/bd_runs/sel --select=val/student_top1 \
        --over=lr --plot=val/student_top1:lr --out=docs/results/sel

The grid: `--sweep='a=1,2;b=x,y'` is the product a x b; `--sweep` given
twice is the union of two grids (e.g. a different lr per arm). A name is a
config argument of the config file (`:a=1`), or `config.<field>` for a field
of the config (`--config.<field>=...`). Other `--config.<field>=value` flags
go unchanged to every cell.

Each cell is one workdir under `--root`, named by its config arguments and
swept fields in sorted order (`arm=fixed,epochs=300,images=100,lr=0.01`), so
two sweeps that make the same cell share it. `sweep_cell.json` in the workdir
records what the cell is (its arguments, command) and, after each run, its
wall time, device and the machine's load; `collect` reads that file, never
the folder name. A cell is finished when its `student.npz` exists (the
trainer writes it at the last step); an interrupted cell resumes from its
checkpoint when run again. A cell being run by another `--run` (a lock file)
is skipped, so several `--run` processes can share one grid. The cells of
`--run` share JAX's persistent compilation cache (`ROOT/.jax_cache`, or
`--compilation_cache=DIR|none`): the seeds of one setting, and the
evaluators of every cell with the same student, compile once. (On the
Fashion-MNIST miniature's CPU box this cut a 100-epoch cell from ~97 s to
~46-62 s.)

Every cell's config is built and checked before anything runs: a wrong
argument or field is one error line naming the cell.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import importlib.util
import io
import itertools
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Sequence

from big_distill import fileio
from big_distill import metrics as metrics_lib
from big_distill.errors import ConfigError, UserError, WorkdirError

CELL_FILE = "sweep_cell.json"
LOCK_FILE = "sweep.lock"
CACHE_ENV, CACHE_DIR = "JAX_COMPILATION_CACHE_DIR", ".jax_cache"
FINISHED_FILE = "student.npz"
SEED_FIELDS = ("seed", "config.seed")
# The Markdown table's columns, where logged (the CSVs hold every metric).
DEFAULT_COLUMNS = ("val/student_top1", "test/student_top1", "test_dist/t1_agree_top1",
                   "train/t1_loss", "train_dist/t1_kl", "test_dist/t1_kl",
                   "test_cal/student_ece", "val/student_loss")
PREEMPTED_EXIT_CODE = 143  # big_distill.train's: stop the sweep, rerun later.


# ---- The grid --------------------------------------------------------------

def parse_grid(text: str) -> list[tuple[str, list[str]]]:
  """'a=1,2;b=x' -> [('a', ['1', '2']), ('b', ['x'])], with a clear error."""
  out, seen = [], set()
  for part in text.split(";"):
    part = part.strip()
    if not part:
      continue
    name, eq, values = part.partition("=")
    name = name.strip()
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not eq or not name or not vals:
      raise ConfigError(f"--sweep={text!r}: {part!r} is not NAME=V1,V2,...; write e.g. "
                        "--sweep='lr=0.001,0.003;seed=0,1,2'.")
    if name in seen:
      raise ConfigError(f"--sweep={text!r} names {name!r} twice.")
    if name.startswith("--"):
      raise ConfigError(f"--sweep={text!r}: write {name[2:]!r}, without the dashes.")
    seen.add(name)
    out.append((name, vals))
  if not out:
    raise ConfigError(f"--sweep={text!r} is empty; write e.g. --sweep='lr=0.001,0.003'.")
  return out


def split_config(spec: str) -> tuple[str, dict[str, str]]:
  """'configs/x.py:a=1,b' -> ('configs/x.py', {'a': '1', 'b': 'true'})."""
  path, _, arg = spec.partition(":")
  args = {}
  for part in arg.split(","):
    part = part.strip()
    if part:
      name, eq, value = part.partition("=")
      args[name.strip()] = value.strip() if eq else "true"
  return path, args


def _name_value(value: str) -> str:
  """A value as it appears in a folder name: a path by its last part."""
  if "/" in value:
    value = value.rstrip("/").rsplit("/", 1)[-1]
  return re.sub(r"[^A-Za-z0-9._+-]", "_", value)


class Cell:
  """One run of the grid: its config arguments and `--config.` overrides."""

  def __init__(self, config_path: str, args: dict[str, str], overrides: dict[str, str],
               swept: Sequence[str]):
    self.config_path = config_path
    self.args = dict(args)
    self.overrides = dict(overrides)  # 'config.lr' -> '0.01'
    self.swept = tuple(swept)
    items = sorted(self.args.items()) + sorted(self.overrides.items())
    self.name = ",".join(f"{k}={_name_value(v)}" for k, v in items) or "default"

  @property
  def fields(self) -> dict[str, str]:
    """Every argument and override, the identity of the cell."""
    return {**self.args, **self.overrides}

  def command(self, root: str, passthrough: Sequence[str], python: str) -> list[str]:
    spec = self.config_path
    if self.args:
      spec += ":" + ",".join(f"{k}={v}" for k, v in self.args.items())
    overrides = [f"--{k}={v}" for k, v in self.overrides.items()]
    return [python, "-m", "big_distill.train", f"--config={spec}", *passthrough, *overrides,
            f"--workdir={os.path.join(root, self.name)}"]


def expand(config_spec: str, grids: Sequence[str]) -> list[Cell]:
  """The cells of the union of `grids` over the base `config_spec`, in order.

  Later names vary fastest: `--sweep='arm=a,b;seed=0,1'` gives (a,0) (a,1)
  (b,0) (b,1). A cell made twice (by two grids) is kept once.
  """
  path, base = split_config(config_spec)
  cells, names = [], set()
  for text in grids or [""]:
    grid = parse_grid(text) if text else []
    keys = [k for k, _ in grid]
    for values in itertools.product(*[v for _, v in grid]):
      args, overrides = dict(base), {}
      for k, v in zip(keys, values):
        if k.startswith("config."):
          overrides[k] = v
        else:
          args[k] = v
      cell = Cell(path, args, overrides, keys)
      if cell.name not in names:
        names.add(cell.name)
        cells.append(cell)
  return cells


# ---- Checking every cell's config up front ---------------------------------

def _load_config_module(path: str):
  if not os.path.exists(path):
    raise ConfigError(f"--config={path}: no such file (relative paths are from "
                      f"{os.getcwd()}).")
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())  # So that configs import `configs.x` as train does.
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _convert(value: str, old: Any, where: str):
  if isinstance(old, bool):
    if value.lower() not in ("true", "false", "1", "0"):
      raise ConfigError(f"{where}={value!r}: expected true or false.")
    return value.lower() in ("true", "1")
  for t in (int, float):
    if isinstance(old, t):
      try:
        return t(value)
      except ValueError:
        raise ConfigError(f"{where}={value!r}: expected a number ({t.__name__}).") from None
  return value


def check_cells(cells: Sequence[Cell], passthrough: Sequence[str]) -> None:
  """Builds every cell's config as the trainer will; raises ConfigError naming the cell."""
  modules = {}
  fixed = {}
  for flag in passthrough:
    name, eq, value = flag[2:].partition("=")
    if not eq:
      raise ConfigError(f"{flag}: write --config.FIELD=VALUE.")
    fixed[name] = value
  for cell in cells:
    if cell.config_path not in modules:
      modules[cell.config_path] = _load_config_module(cell.config_path)
    arg = ",".join(f"{k}={v}" for k, v in cell.args.items())
    try:
      config = modules[cell.config_path].get_config(arg or None)
    except (ValueError, TypeError, KeyError) as e:
      raise ConfigError(f"cell {cell.name}: --config={cell.config_path}:{arg}: {e}") from None
    for name, value in {**fixed, **cell.overrides}.items():
      *parents, leaf = name.split(".")[1:]
      node = config
      try:
        for p in parents:
          node = node[p]
        old = node[leaf]
      except (KeyError, AttributeError, TypeError):
        raise ConfigError(f"cell {cell.name}: --{name}: no such config field in "
                          f"{cell.config_path}.") from None
      _convert(value, old, f"cell {cell.name}: --{name}")


# ---- Running ---------------------------------------------------------------

def finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, FINISHED_FILE))


def locked(workdir: str) -> bool:
  """Whether another sweep is running this cell now (it holds its lock)."""
  path = os.path.join(workdir, LOCK_FILE)
  if not os.path.exists(path):
    return False
  with open(path, "a") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return True
    fcntl.flock(lock, fcntl.LOCK_UN)
  return False


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}


def _write_json(path: str, obj: dict) -> None:
  with fileio.atomic_write(path) as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.write("\n")


_DEVICE: str | None = None


def device_string(python: str) -> str:
  """What the cells run on, e.g. 'cpu x1 (cpu); host 2 CPU cores (x86_64)'; asked once."""
  global _DEVICE
  if _DEVICE is None:
    try:
      out = subprocess.run(
          [python, "-c", "import jax; d = jax.devices(); "
           "print(d[0].platform, len(d), d[0].device_kind)"],
          capture_output=True, text=True, timeout=300, check=True)
      plat, n, kind = out.stdout.strip().split(" ", 2)
      _DEVICE = f"{plat} x{n} ({kind}); host {os.cpu_count()} CPU cores ({platform.machine()})"
    except (OSError, subprocess.SubprocessError, ValueError):
      _DEVICE = f"unknown; host {os.cpu_count()} CPU cores ({platform.machine()})"
  return _DEVICE


def _record(cell: Cell, workdir: str, cmd: list[str], extra: dict | None = None) -> dict:
  path = os.path.join(workdir, CELL_FILE)
  info = _read_json(path)
  info.update({"name": cell.name, "config": cell.config_path, "args": cell.args,
               "overrides": cell.overrides, "swept": list(cell.swept),
               "command": shlex.join(cmd)})
  info.update(extra or {})
  _write_json(path, info)
  return info


def cell_env(root: str, cache: str | None) -> dict[str, str]:
  """The environment of the cells that `--run` starts: JAX's persistent
  compilation cache at `cache` (default ROOT/.jax_cache; 'none': off), unless
  the caller's JAX_COMPILATION_CACHE_DIR names one already.

  Cells of one sweep mostly compile the same programs (the seeds of a cell,
  and the evaluators of every cell with the same student), so each compiles
  them once; results are unchanged (the cached program is the compiled one).
  """
  env = dict(os.environ)
  if cache == "none":
    env.pop(CACHE_ENV, None)
  elif cache or not env.get(CACHE_ENV):
    env[CACHE_ENV] = os.path.abspath(os.path.expanduser(cache or os.path.join(root, CACHE_DIR)))
  return env


def run_cells(cells: Sequence[Cell], root: str, passthrough: Sequence[str], python: str,
              log=print, env: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
  """Runs the unfinished cells one after another; returns (ran, failed) names.

  A failed cell does not stop the others (its command is printed for a
  rerun); a preempted one (exit 143) stops the sweep with that exit code.
  `env`: the cells' environment (default: this process's).
  """
  os.makedirs(root, exist_ok=True)
  ran, failed = [], []
  for i, cell in enumerate(cells, 1):
    workdir = os.path.join(root, cell.name)
    cmd = cell.command(root, passthrough, python)
    if finished(workdir):
      log(f"# [{i}/{len(cells)}] {cell.name}: finished, skipped.")
      continue
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, LOCK_FILE), "w") as lock:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        log(f"# [{i}/{len(cells)}] {cell.name}: being run by another sweep, skipped.")
        continue
      if finished(workdir):  # Finished while we waited for the lock.
        continue
      previous = _read_json(os.path.join(workdir, CELL_FILE))
      log(f"# [{i}/{len(cells)}] {cell.name}"
          + (" (resuming)" if os.path.exists(os.path.join(workdir, "checkpoints")) else ""))
      log("$ " + shlex.join(cmd))
      _record(cell, workdir, cmd)
      load = os.getloadavg()[0]
      start = time.time()
      rc = subprocess.run(cmd, check=False, env=env).returncode
      wall = time.time() - start
      _record(cell, workdir, cmd, {
          # A resumed cell adds the time of its earlier attempts.
          "wall_s": wall + previous.get("wall_s", 0.0),
          "attempts": previous.get("attempts", 0) + 1,
          "device": device_string(python),
          "load_avg_1min_at_start": load,
          "returncode": rc,
          "ended_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      })
    ran.append(cell.name)
    if rc == PREEMPTED_EXIT_CODE:
      log(f"# {cell.name}: preempted; rerun the same sweep command to resume.")
      raise SystemExit(PREEMPTED_EXIT_CODE)
    if rc != 0:
      log(f"# {cell.name}: FAILED (exit status {rc}); its command above resumes it.")
      failed.append(cell.name)
  return ran, failed


def slurm_script(cells: Sequence[Cell], root: str, passthrough: Sequence[str], python: str,
                 path: str) -> tuple[str, str]:
  """Writes `path` (an sbatch array job) and `path.commands` (one cell a line)."""
  todo = [c for c in cells if not finished(os.path.join(root, c.name))]
  commands = path + ".commands"
  with open(commands, "w") as f:
    for c in todo:
      f.write(shlex.join(c.command(root, passthrough, python)) + "\n")
  n = max(len(todo), 1)
  body = f"""#!/bin/bash
# A big_distill sweep: one unfinished cell per array task ({len(todo)} of {len(cells)}).
# Made by: python -m big_distill.sweep ... --slurm={path}
# Submit from {os.getcwd()}: sbatch {path}
# A preempted task (exit 143) resumes from its checkpoint when requeued or
# resubmitted; remake this file to drop the cells that have finished since.
#SBATCH --job-name=big_distill_sweep
#SBATCH --array=0-{n - 1}
#SBATCH --requeue
#SBATCH --output=%x-%A_%a.out
set -euo pipefail
cd {shlex.quote(os.getcwd())}
cmd=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(os.path.abspath(commands))})
[ -n "$cmd" ] || exit 0
eval "exec $cmd"
"""
  with open(path, "w") as f:
    f.write(body)
  return path, commands


# ---- Collecting ------------------------------------------------------------

def _is_test(metric: str) -> bool:
  """Whether a metric comes from a test evaluator: 'test/..', 'test_dist/..', 'dist_test/..'."""
  ev = metric.rpartition("/")[0]
  return any(tok == "test" for tok in re.split(r"[^A-Za-z0-9]+", ev.lower()))


def check_select(select: str) -> None:
  if "/" not in select:
    raise ConfigError(f"--select={select!r}: give a logged metric, e.g. "
                      "--select=val/student_top1.")
  if _is_test(select):
    raise ConfigError(
        f"--select={select}: a test metric. Choices are made on validation only "
        "(the test set is read for the final table and must not pick anything): "
        "use a validation evaluator's metric, e.g. --select=val/student_top1.")


def _summarize(rows: list[dict]) -> tuple[dict, dict]:
  """Final and best value of every numeric metric but the progress counters."""
  keys = sorted({k for r in rows for k in r if k != "step" and not k.startswith("progress/")})
  final, best = {}, {}
  for k in keys:
    v = metrics_lib.last(rows, k)
    if v is not None:
      final[k] = v
      best[k] = metrics_lib.best(rows, k)
  return final, best


def read_cells(root: str, names: Sequence[str] | None = None) -> list[dict]:
  """Every cell under `root` (a folder with sweep_cell.json), or those `names`."""
  if not os.path.isdir(root):
    raise WorkdirError(f"--root={root}: no such folder; give the --root of a sweep.")
  out = []
  for entry in sorted(os.listdir(root)) if names is None else names:
    workdir = os.path.join(root, entry)
    info = _read_json(os.path.join(workdir, CELL_FILE))
    if not info:
      continue
    rows = metrics_lib.read_metrics(workdir, missing_ok=True, quiet=True)
    final, best = _summarize(rows)
    last = metrics_lib.last(rows, "step") if rows else None
    # The trainer runs every evaluator at a run's last step: an evaluation
    # metric last logged earlier is stale (the run was killed between its last
    # checkpoint and those evaluations, with a trainer before ab3fd00).
    stale = {k: max(r["step"] for r in rows if k in r) for k in final
             if not k.startswith(("train/", "progress/"))} if finished(workdir) else {}
    stale = {k: s for k, s in stale.items() if last is not None and s < last}
    out.append({
        "name": info.get("name", entry), "workdir": workdir,
        "fields": {**info.get("args", {}), **info.get("overrides", {})},
        "swept": info.get("swept", []), "finished": finished(workdir),
        "steps": last, "final": final, "best": best, "stale": stale,
        **{k: info.get(k) for k in ("command", "wall_s", "device", "load_avg_1min_at_start",
                                    "attempts", "ended_utc")},
    })
  return out


def _mean_std(values: list[float]) -> tuple[float, float]:
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  return mean, std


def varying_fields(cells: Sequence[dict]) -> list[str]:
  """Fields whose value differs between cells, in first-seen order."""
  names = list(dict.fromkeys(k for c in cells for k in c["fields"]))
  return [k for k in names if len({c["fields"].get(k) for c in cells}) > 1]


def group(cells: Sequence[dict], by: Sequence[str]) -> list[dict]:
  """Finished cells grouped by the fields `by`: n, mean and std of every final metric."""
  groups: dict[tuple, list[dict]] = {}
  for c in cells:
    if c["finished"]:
      groups.setdefault(tuple(c["fields"].get(k) for k in by), []).append(c)
  out = []
  for key, members in groups.items():
    metrics = sorted({m for c in members for m in c["final"]})
    stats = {}
    for m in metrics:
      values = [c["final"][m] for c in members if m in c["final"]]
      values = [v for v in values if v is not None]
      if values:
        mean, std = _mean_std(values)
        stats[m] = {"mean": mean, "std": std, "n": len(values)}
    out.append({"fields": dict(zip(by, key)), "n": len(members),
                "cells": [c["name"] for c in members], "metrics": stats,
                "wall_s": sum(c["wall_s"] or 0 for c in members)})
  return out


def select(groups: Sequence[dict], metric: str, over: Sequence[str]) -> list[dict]:
  """For each combination of the fields not in `over`: the group best on `metric`."""
  check_select(metric)
  lower = metrics_lib.lower_is_better(metric)
  best: dict[tuple, dict] = {}
  for g in groups:
    if metric not in g["metrics"]:
      continue
    key = tuple((k, v) for k, v in g["fields"].items() if k not in over)
    value = g["metrics"][metric]["mean"]
    old = best.get(key)
    if old is None or (value < old["value"] if lower else value > old["value"]):
      best[key] = {"within": dict(key), "chosen": {k: g["fields"][k] for k in over},
                   "metric": metric, "value": value, "n": g["metrics"][metric]["n"],
                   "candidates": 0}
  for g in groups:  # How many candidates each choice was made among.
    key = tuple((k, v) for k, v in g["fields"].items() if k not in over)
    if key in best and metric in g["metrics"]:
      best[key]["candidates"] += 1
  return list(best.values())


def _fmt(stat: dict | None, metric: str) -> str:
  if not stat:
    return "-"
  scale, digits = (100, 2) if metric.rpartition("/")[2].endswith(("top1", "top5")) else (1, 4)
  m, s = stat["mean"] * scale, stat["std"] * scale
  return f"{m:.{digits}f} ± {s:.{digits}f}" if stat["n"] > 1 else f"{m:.{digits}f}"


def markdown(groups: Sequence[dict], by: Sequence[str], columns: Sequence[str]) -> str:
  """Groups x columns; top-1 metrics in %, `mean ± std (n seeds)`."""
  head = [*by, "n", *columns]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for g in groups:
    row = [str(g["fields"][k]) for k in by] + [str(g["n"])]
    row += [_fmt(g["metrics"].get(c), c) for c in columns]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def _sort_key(value):
  num = metrics_lib.number(value) if not isinstance(value, str) else None
  if num is None:
    try:
      num = float(value)
    except (TypeError, ValueError):
      return (1, str(value))
  return (0, num)


def _csv(rows: list[dict], columns: list[str]) -> str:
  buf = io.StringIO()
  w = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
  w.writeheader()
  for r in rows:
    w.writerow(r)
  return buf.getvalue()


def _teacher_reference(cells: Sequence[dict], metric: str) -> dict[str, float]:
  """'<eval>/student_<m>' -> the teachers' '<eval>/<t>_<m>' where all cells agree."""
  ev, _, name = metric.rpartition("/")
  if not name.startswith("student_"):
    return {}
  suffix = name[len("student_"):]
  out = {}
  keys = {k for c in cells for k in c["final"] if k.startswith(ev + "/") and k.endswith("_" + suffix)}
  for k in sorted(keys - {metric}):
    teacher = k.rpartition("/")[2][:-len(suffix) - 1]
    if "_" in teacher:  # e.g. t1_agree_top1: a distance, not a teacher's own metric.
      continue
    values = {round(c["final"][k], 6) for c in cells if k in c["final"]}
    if len(values) == 1:
      out[f"teacher {teacher}"] = values.pop()
  return out


def collect(root: str, out_dir: str | None = None, *, select_metric: str | None = None,
            over: Sequence[str] | None = None, columns: Sequence[str] | None = None,
            plots: Sequence[str] = (), names: Sequence[str] | None = None,
            log=print) -> dict:
  """The sweep's tables (CSV, Markdown, JSON) and plots; returns the summary.

  Writes into `out_dir` (default ROOT/collect): cells.csv (every cell, final
  and best of every metric), groups.csv and groups.md (mean ± std over the
  seeds of each combination of the other varying fields), summary.json (all
  of it, and the choice made by `select_metric`), and a PNG per `plots`
  entry 'METRIC:FIELD' (FIELD a swept field: the metric's mean ± std
  against it, one line per combination of the others; FIELD 'step' or
  'epoch': every cell's curve). `names`: only these cells (those of one
  sweep, when several sweeps share a root).
  """
  if select_metric:
    check_select(select_metric)
  cells = read_cells(root, names)
  if not cells:
    raise WorkdirError(f"--root={root}: no sweep cells (folders with {CELL_FILE}) in it.")
  out_dir = out_dir or os.path.join(root, "collect")
  os.makedirs(out_dir, exist_ok=True)
  fields = varying_fields(cells)
  by = [f for f in fields if f not in SEED_FIELDS]
  groups = sorted(group(cells, by), key=lambda g: [_sort_key(g["fields"][k]) for k in by])
  logged = sorted({m for c in cells for m in c["final"]})
  cols = [c for c in (columns or DEFAULT_COLUMNS) if c in logged]
  if select_metric and select_metric not in logged:
    raise ConfigError(f"--select={select_metric}: no cell under {root} logged it; logged "
                      f"metrics include {', '.join(m for m in logged if not m.startswith('train/'))[:400]}.")
  if select_metric and select_metric not in cols:
    cols.insert(0, select_metric)

  # Cells: one row each, fields then final and best of every metric.
  cell_cols = ["name", *fields, "finished", "steps", "wall_s", "device"]
  cell_cols += [f"final:{m}" for m in logged] + [f"best:{m}" for m in logged] + ["command"]
  cell_rows = [{"name": c["name"], **c["fields"], "finished": c["finished"],
                "steps": c["steps"], "wall_s": c["wall_s"], "device": c["device"],
                "command": c["command"],
                **{f"final:{m}": v for m, v in c["final"].items()},
                **{f"best:{m}": v for m, v in c["best"].items()}} for c in cells]
  with open(os.path.join(out_dir, "cells.csv"), "w") as f:
    f.write(_csv(cell_rows, cell_cols))
  group_cols = [*by, "n"] + [f"{m}:{s}" for m in logged for s in ("mean", "std")]
  group_rows = [{**g["fields"], "n": g["n"],
                 **{f"{m}:{s}": st[s] for m, st in g["metrics"].items() for s in ("mean", "std")}}
                for g in groups]
  with open(os.path.join(out_dir, "groups.csv"), "w") as f:
    f.write(_csv(group_rows, group_cols))
  table = markdown(groups, by, cols)
  with open(os.path.join(out_dir, "groups.md"), "w") as f:
    f.write(table + "\n")

  chosen = []
  stale = {c["name"]: c["stale"] for c in cells if c["stale"]}
  ended = {c["name"]: c["steps"] for c in cells}
  for name, metrics in stale.items():
    where = ", ".join(f"{k} at step {v}" for k, v in sorted(metrics.items())[:4])
    log(f"# warning: {name}: ended at step {ended[name]:.0f} but last logged {where}"
        f"{' ...' if len(metrics) > 4 else ''}: its final values are earlier ones. Run its "
        "evaluations on its student.npz (python -m big_distill.evaluate --config=... "
        "--init=WORKDIR/student.npz) and append them at its last step.")
  if select_metric:
    chosen = select(groups, select_metric, list(over) if over else by)
  paths = []
  for spec in plots:
    paths.append(plot(cells, groups, spec, out_dir, by))
  summary = {"root": root, "fields": fields, "grouped_by": by,
             "unfinished": [c["name"] for c in cells if not c["finished"]],
             "not_started": [n for n in names or () if n not in {c["name"] for c in cells}],
             "stale": stale, "select": select_metric, "over": list(over) if over else by,
             "selected": chosen, "groups": groups, "cells": cells, "figures": paths}
  _write_json(os.path.join(out_dir, "summary.json"), summary)
  log(table)
  for ch in chosen:
    log(f"# selected on {ch['metric']} (mean of {ch['n']}, among {ch['candidates']}): "
        + ", ".join(f"{k}={v}" for k, v in ch["chosen"].items())
        + (" for " + ", ".join(f"{k}={v}" for k, v in ch["within"].items()) if ch["within"] else "")
        + f" -> {ch['value']:.4f}")
  done = sum(c["finished"] for c in cells)
  log(f"# {done} of {len(names) if names else len(cells)} cells finished; wrote {out_dir}/"
      "{cells.csv,groups.csv,groups.md,summary.json}" + "".join(f", {p}" for p in paths))
  return summary


def plot(cells: Sequence[dict], groups: Sequence[dict], spec: str, out_dir: str,
         by: Sequence[str]) -> str:
  """One figure of `spec` = 'METRIC:FIELD' (see collect)."""
  from big_distill import plotting  # pylint: disable=g-import-not-at-top  (matplotlib)
  metric, sep, field = spec.rpartition(":")
  if not sep or not metric:
    raise ConfigError(f"--plot={spec!r}: write METRIC:FIELD, e.g. --plot=val/student_top1:lr "
                      "or --plot=val/student_top1:step.")
  safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{metric}_vs_{field}").strip("_")
  if field in plotting.X_AXES:
    workdirs = [c["workdir"] for c in cells if c["final"]]
    if not workdirs:
      raise ConfigError(f"--plot={spec}: no cell has logged anything yet.")
    sub = os.path.join(out_dir, safe)
    written = plotting.plot(workdirs, sub, x=field, metrics=[metric])
    if not written:
      raise ConfigError(f"--plot={spec}: no cell logged {metric}.")
    return written[0]
  if field not in by:
    raise ConfigError(f"--plot={spec}: {field!r} is not a field that varies in this sweep "
                      f"(those are: {', '.join(by) or 'none'}; or 'step', 'epoch').")
  rest = [k for k in by if k != field]
  lines: dict[str, list] = {}
  for g in groups:
    st = g["metrics"].get(metric)
    if st:
      label = ", ".join(f"{k}={g['fields'][k]}" for k in rest) or metric
      lines.setdefault(label, []).append((g["fields"][field], st["mean"], st["std"], st["n"]))
  if not lines:
    raise ConfigError(f"--plot={spec}: no finished cell logged {metric}.")
  return plotting.plot_against_field(lines, os.path.join(out_dir, safe + ".png"), field=field,
                                     metric=metric, reference=_teacher_reference(cells, metric))


# ---- Command line ----------------------------------------------------------

def _run_main(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(prog="python -m big_distill.sweep",
                              description="Runs a grid of big_distill.train cells.", allow_abbrev=False,
                              epilog="Also: python -m big_distill.sweep collect --help")
  p.add_argument("--config", required=True, help="configs/X.py[:args], the base of every cell")
  p.add_argument("--sweep", action="append", default=[],
                 help="'a=1,2;b=x,y' (product); repeat for a union of grids")
  p.add_argument("--root", required=True, help="folder of the cells' workdirs")
  p.add_argument("--python", default=sys.executable, help="the Python that runs each cell")
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--print", action="store_true", help="print the commands (default)")
  mode.add_argument("--run", action="store_true", help="run the unfinished cells in order")
  mode.add_argument("--slurm", metavar="FILE", help="write a SLURM array job to FILE")
  p.add_argument("--compilation_cache", default=None, metavar="DIR",
                 help="with --run: JAX's persistent compilation cache for the cells (default: "
                      f"$JAX_COMPILATION_CACHE_DIR if set, else ROOT/{CACHE_DIR}; 'none': off)")
  args, rest = p.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    p.error(f"unrecognized arguments: {' '.join(bad)} (only --config.FIELD=VALUE is "
            "passed on to the cells)")
  root = os.path.abspath(os.path.expanduser(args.root))  # orbax wants absolute paths.
  cells = expand(args.config, args.sweep)
  check_cells(cells, rest)
  if args.slurm:
    path, commands = slurm_script(cells, root, rest, args.python, args.slurm)
    print(f"# wrote {path} and {commands}; submit with: sbatch {path}")
    return 0
  if not args.run:
    for cell in cells:
      done = finished(os.path.join(root, cell.name))
      print(("# finished: " if done else "") + shlex.join(cell.command(root, rest, args.python)))
    return 0
  print(f"# {len(cells)} cells under {root}", flush=True)
  _, failed = run_cells(cells, root, rest, args.python,
                        log=lambda s: print(s, flush=True),
                        env=cell_env(root, args.compilation_cache))
  if failed:
    print("# failed cells: " + ", ".join(failed))
    return 1
  return 0


def _collect_main(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(prog="python -m big_distill.sweep collect",
                              description="Tables and plots of a sweep's cells.")
  p.add_argument("--root", required=True)
  p.add_argument("--config", default=None,
                 help="with --sweep: only the cells of this sweep (several may share a root)")
  p.add_argument("--sweep", action="append", default=[])
  p.add_argument("--out", default=None, help="output folder (default: ROOT/collect)")
  p.add_argument("--select", default=None,
                 help="a validation metric to choose on, e.g. val/student_top1 (never test)")
  p.add_argument("--over", default=None,
                 help="fields chosen over, e.g. lr,mixup (default: every varying field "
                      "but the seed); the choice is made per combination of the others")
  p.add_argument("--columns", default=None, help="metrics of the Markdown table, comma-separated")
  p.add_argument("--plot", action="append", default=[], metavar="METRIC:FIELD",
                 help="e.g. val/student_top1:lr or val/student_top1:step (repeatable)")
  a = p.parse_args(argv)
  names = [c.name for c in expand(a.config, a.sweep)] if a.config else None
  collect(os.path.abspath(os.path.expanduser(a.root)), a.out, select_metric=a.select,
          over=a.over.split(",") if a.over else None,
          columns=a.columns.split(",") if a.columns else None, plots=a.plot, names=names)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    if argv and argv[0] == "collect":
      return _collect_main(argv[1:])
    return _run_main(argv)
  except UserError as e:
    print(f"big_distill.sweep: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
