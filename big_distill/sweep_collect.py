"""Collecting a sweep: every cell's metrics, groups over seeds, a choice on validation,
tables (CSV, Markdown, JSON) and plots.

Reads only what the cells wrote (`sweep_cell.json`, `metrics.jsonl`,
`student.npz`), never the folder names; see big_distill/sweep.py.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from typing import Sequence

from big_distill import metrics as metrics_lib
from big_distill.errors import ConfigError, WorkdirError
from big_distill.sweep_launch import CELL_FILE, finished, read_json, write_json

SEED_FIELDS = ("seed", "config.seed")
# The Markdown table's columns, where logged (the CSVs hold every metric).
DEFAULT_COLUMNS = ("val/student_top1", "test/student_top1", "test_dist/t1_agree_top1",
                   "train/t1_loss", "train_dist/t1_kl", "test_dist/t1_kl",
                   "test_cal/student_ece", "val/student_loss")


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
    info = read_json(os.path.join(workdir, CELL_FILE))
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
            recorded: Sequence[dict] = (), log=print) -> dict:
  """The sweep's tables (CSV, Markdown, JSON) and plots; returns the summary.

  Writes into `out_dir` (default ROOT/collect): cells.csv (every cell, final
  and best of every metric), groups.csv and groups.md (mean ± std over the
  seeds of each combination of the other varying fields), summary.json (all
  of it, and the choice made by `select_metric`), and a PNG per `plots`
  entry 'METRIC:FIELD' (FIELD a swept field: the metric's mean ± std
  against it, one line per combination of the others; FIELD 'step' or
  'epoch': every cell's curve). `names`: only these cells (those of one
  sweep, when several sweeps share a root). `recorded`: finished cells of an
  earlier summary.json (another machine's, whose workdirs are gone); each
  joins the tables in place of a cell of its name that has not finished
  here, marked `"recorded": True`. A cell finished here wins over its record.
  """
  if select_metric:
    check_select(select_metric)
  cells = read_cells(root, names) if os.path.isdir(root) or not recorded else []
  here = {c["name"] for c in cells if c["finished"]}
  extra = {c["name"]: {**c, "recorded": True} for c in recorded
           if c["finished"] and c["name"] not in here and (names is None or c["name"] in names)}
  cells = [extra.pop(c["name"], c) for c in cells] + list(extra.values())
  if names is not None:
    order = {n: i for i, n in enumerate(names)}
    cells.sort(key=lambda c: order.get(c["name"], len(order)))
  if not cells:
    raise WorkdirError(f"--root={root}: no sweep cells (folders with {CELL_FILE}) in it.")
  out_dir = out_dir or os.path.join(root, "collect")
  os.makedirs(out_dir, exist_ok=True)
  fields = varying_fields(cells)
  # The fields selected over stay columns even where the cells read so far share
  # one value (a selection sweep that has only begun): a choice names its value.
  kept = set(fields) | set(over or ())
  by = [f for f in dict.fromkeys(k for c in cells for k in c["fields"])
        if f in kept and f not in SEED_FIELDS]
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
  write_json(os.path.join(out_dir, "summary.json"), summary)
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
    workdirs = [c["workdir"] for c in cells if c["final"] and not c.get("recorded")]
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
