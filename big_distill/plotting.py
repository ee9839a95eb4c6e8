"""Figures of a run's `metrics.jsonl`: accuracy, student-teacher distance, loss.

The trainer appends one JSON object a line to `WORKDIR/metrics.jsonl`:
`{"step": int, "progress/epoch": float, "<name>": float, ...}` (or `"epoch"`),
a line holding only the metrics logged at that step; non-finite values are
the strings "nan", "inf", "-inf". Names follow `<eval>/<model>_<metric>`:
`test/student_top1`, `test/t1_top1` (a teacher: the same value at every eval),
`test/t1_kl` and `test/t1_agree_top1` (student vs teacher t1), `train/loss`.

    from big_distill import plotting
    paths = plotting.plot(["runs/fm_300ep", "runs/fm_1000ep"], "runs/figures")

draws one line per run (and eval), so patience shows as curves side by side.
Figures are drawn on a bare `matplotlib.figure.Figure` (the Agg renderer, no
pyplot), so importing this never picks a GUI backend or keeps figures alive.
Workdirs and the output folder may be local or `gs://` (through tf.io.gfile).
"""

from __future__ import annotations

import fnmatch
import io
import json
import math
import os
import re
from typing import Any, Iterable, Sequence

from matplotlib.figure import Figure

METRICS_FILE = "metrics.jsonl"
FIGURES = ("accuracy", "distance", "train_loss")
X_AXES = ("epoch", "step")
_X_KEYS = {"epoch": ("epoch", "progress/epoch"), "step": ("step",)}
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# Teacher lines are drawn in black; several get these dash patterns in turn.
_TEACHER_DASHES = ((6, 3), (2, 2), (8, 3, 2, 3), (12, 4))
_EVAL_STYLES = ("-", "--", ":", "-.")


# ---- Reading ---------------------------------------------------------------

def _is_remote(path: str) -> bool:
  return "://" in path


def _open(path: str, mode: str):
  if _is_remote(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.GFile(path, mode)
  return open(path, mode)


def _exists(path: str) -> bool:
  if _is_remote(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.exists(path)
  return os.path.exists(path)


def metrics_path(workdir: str) -> str:
  return workdir.rstrip("/") + "/" + METRICS_FILE


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of `WORKDIR/metrics.jsonl`, in file order.

  Lines that are not a JSON object are skipped with a printed note: a killed
  run leaves a truncated last line, and a run resumed after that appends its
  next line to the broken one.
  """
  path = metrics_path(workdir)
  if not _exists(path):
    raise FileNotFoundError(
        f"No metrics file {path}: is {workdir} the --workdir of a big_distill run "
        "that has logged at least once?")
  rows, bad = [], []
  with _open(path, "r") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        row = None
      if isinstance(row, dict):
        rows.append(row)
      else:
        bad.append(i)
  if bad:
    print(f"note: {path}: skipped {len(bad)} unreadable line(s): "
          f"{', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}")
  return rows


def series(rows: Iterable[dict[str, Any]], key: str, x: str = "epoch"):
  """(xs, ys) of metric `key` against `x`, ordered by step.

  A step logged twice keeps its last value: a run resumed from a checkpoint
  older than its last log repeats those steps, and the repeat is what the
  restored run computed.
  """
  by_step = {}
  for i, row in enumerate(rows):
    value = _number(row.get(key))
    xv = next((_number(row[k]) for k in _X_KEYS[x] if k in row), None)
    if value is not None and xv is not None:
      by_step[row.get("step", i)] = (xv, value)
  points = [by_step[s] for s in sorted(by_step)]
  return [p[0] for p in points], [p[1] for p in points]


def _number(v) -> float | None:
  if isinstance(v, str):
    return _NON_FINITE.get(v.lower())
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    return v
  return None


def _keys(rows: list[dict[str, Any]]) -> list[str]:
  return sorted({k for row in rows for k in row})


def _split(key: str) -> tuple[str, str]:
  """'test/t1_kl' -> ('test', 't1_kl'); the eval name may itself hold '/'."""
  prefix, _, name = key.rpartition("/")
  return prefix, name


def _model_keys(keys: list[str], suffix: str, exclude=("student",)) -> dict[str, tuple[str, str]]:
  """{key: (eval, model)} of the keys `<eval>/<model><suffix>`."""
  out = {}
  for key in keys:
    ev, name = _split(key)
    if ev and name.endswith(suffix) and len(name) > len(suffix):
      model = name[:-len(suffix)]
      if model not in exclude:
        out[key] = (ev, model)
  return out


def _run_names(workdirs: Sequence[str]) -> list[str]:
  """Basenames, lengthened by parent folders until they differ."""
  parts = [[p for p in w.rstrip("/").split("/") if p] or [w] for w in workdirs]
  for depth in range(1, max(map(len, parts)) + 1):
    names = ["/".join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names):
      return names
  return list(workdirs)


# ---- Drawing ---------------------------------------------------------------

class _Runs:
  """The runs' rows, names and colours: run i is colour Ci in every figure."""

  def __init__(self, workdirs: Sequence[str], x: str):
    self.rows = [read_metrics(w) for w in workdirs]
    self.names = _run_names(workdirs)
    self.keys = [_keys(r) for r in self.rows]
    self.x = x

  def __iter__(self):
    for i, (name, rows, keys) in enumerate(zip(self.names, self.rows, self.keys)):
      yield f"C{i % 10}", name, rows, keys


def _new_axes(n: int = 1, width: float = 7.0):
  fig = Figure(figsize=(width * n, 4.5), layout="constrained")
  return fig, [fig.add_subplot(1, n, i + 1) for i in range(n)]


def _finish(ax, x: str, ylabel: str, title: str) -> None:
  ax.set_xlabel(x)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize="small")


def _draw_lines(ax, runs: _Runs, match) -> int:
  """Draws `match(keys) -> {key: label}` for every run; returns the line count."""
  n = 0
  # One line style per eval name, the same in every run.
  evals = sorted({_split(k)[0] for keys in runs.keys for k in match(keys)})
  for color, run, rows, keys in runs:
    for key, label in sorted(match(keys).items()):
      xs, ys = series(rows, key, runs.x)
      if xs:
        style = _EVAL_STYLES[evals.index(_split(key)[0]) % len(_EVAL_STYLES)]
        ax.plot(xs, ys, style, color=color, label=f"{run} {label}".strip(),
                marker="." if len(xs) < 30 else None)
        n += 1
  return n


def _draw_teachers(ax, runs: _Runs) -> None:
  """A dashed line at each teacher's accuracy; one for all runs that agree."""
  lines = {}  # (eval, teacher) -> {run: accuracy}
  for _, run, rows, keys in runs:
    for key, (ev, teacher) in _model_keys(keys, "_top1").items():
      if teacher.endswith("_agree"):
        continue  # `<teacher>_agree_top1` is a distance, drawn in distance.png.
      ys = series(rows, key, runs.x)[1]
      if ys:
        lines.setdefault((ev, teacher), {})[run] = ys[-1]
  colors = {run: color for color, run, _, _ in runs}
  for i, ((ev, teacher), values) in enumerate(sorted(lines.items())):
    dashes = _TEACHER_DASHES[i % len(_TEACHER_DASHES)]
    if len(set(values.values())) == 1:
      value = next(iter(values.values()))
      ax.axhline(value, color="k", dashes=dashes, lw=1.2,
                 label=f"teacher {teacher} {ev} ({value:.4g})")
    else:
      for run, value in values.items():
        ax.axhline(value, color=colors[run], dashes=dashes, lw=1.2,
                   label=f"{run} teacher {teacher} {ev} ({value:.4g})")


def _accuracy(runs: _Runs):
  fig, (ax,) = _new_axes()
  match = lambda keys: {k: _split(k)[0] for k in keys
                        if _split(k)[1] == "student_top1" and _split(k)[0]}
  if not _draw_lines(ax, runs, match):
    return None, "no '<eval>/student_top1' metric"
  _draw_teachers(ax, runs)
  _finish(ax, runs.x, "top-1 accuracy", "Student accuracy (horizontal lines: teachers)")
  return fig, None


def _distance(runs: _Runs):
  fig, axes = _new_axes(2, width=6.5)
  panels = (("_kl", "KL(teacher || student)"), ("_agree_top1", "top-1 agreement"))
  drawn = 0
  for ax, (suffix, title) in zip(axes, panels):
    match = lambda keys, s=suffix: {k: f"{ev}/{m}" for k, (ev, m) in _model_keys(keys, s).items()}
    n = _draw_lines(ax, runs, match)
    if not n:
      ax.text(0.5, 0.5, f"no '<eval>/<teacher>{suffix}' logged", ha="center",
              va="center", transform=ax.transAxes, color="0.4")
    _finish(ax, runs.x, title, f"Student vs teacher: {title}")
    drawn += n
  if not drawn:
    return None, "no '<eval>/<teacher>_kl' or '<eval>/<teacher>_agree_top1' metric"
  return fig, None


def _metric(runs: _Runs, pattern: str, log_y: bool = False, title: str | None = None):
  """Every metric matching `pattern` (an fnmatch pattern such as 'train/*')."""
  fig, (ax,) = _new_axes()
  match = lambda keys: {k: (k if k != pattern else "") for k in keys
                        if fnmatch.fnmatchcase(k, pattern) and k != "step"}
  if not _draw_lines(ax, runs, match):
    return None, f"no metric matching {pattern!r}"
  ys = [y for line in ax.get_lines() for y in line.get_ydata()]
  if log_y and all(y > 0 for y in ys if math.isfinite(y)):
    ax.set_yscale("log")
  _finish(ax, runs.x, pattern, title or pattern)
  return fig, None


def _save(fig: Figure, path: str) -> None:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120)
  with _open(path, "wb") as f:
    f.write(buf.getvalue())


def plot(workdirs: Sequence[str] | str, out_dir: str | None = None, x: str = "epoch",
         metrics: Sequence[str] = FIGURES) -> list[str]:
  """Draws the runs' figures into `out_dir` and returns the paths written.

  Args:
    workdirs: run folders, each holding a `metrics.jsonl`.
    out_dir: where the PNGs go; None: the first workdir.
    x: 'epoch' or 'step'.
    metrics: figure names from FIGURES (`accuracy.png`: every
      `<eval>/student_top1` with the teachers' `<eval>/<teacher>_top1` dashed;
      `distance.png`: `<eval>/<teacher>_kl` and `_agree_top1`; `train_loss.png`:
      `train/loss`, log y) and/or metric names or fnmatch patterns
      ('train/lr', 'test/*_ece'), each drawn into `<name>.png`.

  A figure whose metrics no run logged is skipped with a printed note.
  Raises FileNotFoundError naming the path when a workdir has no metrics file.
  """
  if isinstance(workdirs, str):
    workdirs = [workdirs]
  if not workdirs:
    raise ValueError("plot() needs at least one workdir.")
  if x not in X_AXES:
    raise ValueError(f"x={x!r}: expected one of {X_AXES}.")
  runs = _Runs(workdirs, x)  # Reads every file first: a missing one fails early.
  out_dir = (out_dir or workdirs[0]).rstrip("/") or "/"
  if not _is_remote(out_dir):
    os.makedirs(out_dir, exist_ok=True)
  paths = []
  for name in metrics:
    if name == "accuracy":
      fig, why = _accuracy(runs)
    elif name == "distance":
      fig, why = _distance(runs)
    elif name == "train_loss":
      fig, why = _metric(runs, "train/loss", log_y=True, title="Training loss")
    else:
      fig, why = _metric(runs, name)
      name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "metric"
    if fig is None:
      print(f"note: skipping {name}.png: {why} in {', '.join(runs.names)}.")
      continue
    path = f"{out_dir}/{name}.png"
    _save(fig, path)
    paths.append(path)
  return paths
