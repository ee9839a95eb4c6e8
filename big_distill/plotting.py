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
import math
import os
import re
import textwrap
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure

from big_distill import metrics as metrics_lib

FIGURES = ("accuracy", "distance", "train_loss")
X_AXES = ("epoch", "step")
# Teacher lines are drawn in black; several get these dash patterns in turn.
_TEACHER_DASHES = ((6, 3), (2, 2), (8, 3, 2, 3), (12, 4))
_EVAL_STYLES = ("-", "--", ":", "-.")


read_metrics, series = metrics_lib.read_metrics, metrics_lib.series  # The one reader.


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
  ax.set_title(textwrap.fill(title, 70))  # A long title wraps instead of leaving the figure.
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
  with metrics_lib.open_file(path, "wb") as f:
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
  if "://" not in out_dir:
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


# ---- Sweeps: a metric against a swept field --------------------------------

def plot_against_field(lines: Mapping[str, Sequence[tuple[Any, float, float, int]]],
                       path: str, *, field: str, metric: str,
                       reference: Mapping[str, float] | None = None) -> str:
  """One line per group of cells: `metric` (mean, error bar: std) against `field`.

  Args:
    lines: {label: [(field value, mean, std, n), ...]}, e.g. one line per arm
      of a sweep, its points the budgets; n is the number of seeds behind a
      point (std is drawn only where n > 1).
    path: the PNG to write (local or gs://).
    reference: {label: value}: horizontal dashed lines (e.g. the teacher).

  A numeric field whose values span more than a factor of 20 (learning rates,
  epoch budgets) gets a log x axis; a non-numeric field is drawn as
  categories in the order given.
  """
  fig, (ax,) = _new_axes()
  values = [v for pts in lines.values() for v, *_ in pts]
  numeric = all(metrics_lib.number(v) is not None for v in values)
  categories = list(dict.fromkeys(values))
  for i, (label, pts) in enumerate(lines.items()):
    pts = sorted(pts, key=lambda p: metrics_lib.number(p[0]) if numeric else categories.index(p[0]))
    xs = [metrics_lib.number(p[0]) if numeric else categories.index(p[0]) for p in pts]
    ys = [p[1] for p in pts]
    errs = [p[2] if p[3] > 1 else 0.0 for p in pts]
    ax.errorbar(xs, ys, yerr=errs, fmt="o-", color=f"C{i % 10}", capsize=3,
                label=label + (f" (n={max(p[3] for p in pts)})" if pts else ""))
  if numeric and values:
    xs = [metrics_lib.number(v) for v in values]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
      ax.set_xscale("log")
  elif categories:
    ax.set_xticks(range(len(categories)), [str(c) for c in categories])
  for j, (label, value) in enumerate(sorted((reference or {}).items())):
    ax.axhline(value, color="k", dashes=_TEACHER_DASHES[j % len(_TEACHER_DASHES)], lw=1.2,
               label=f"{label} ({value:.4g})")
  _finish(ax, field, metric, f"{metric} against {field} (mean and std over seeds)")
  if "://" not in path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  _save(fig, path)
  return path
