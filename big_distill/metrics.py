"""Where metrics go, and the one reader of what they leave behind.

Writing: TensorBoard + stdout (clu) and a `metrics.jsonl` file; only process
0 writes. `metrics.jsonl` holds one JSON object per logged step,
`{"step": ..., "<name>": value, ...}`, non-finite values as the strings
"nan", "inf", "-inf"; on resume, lines from after the restored checkpoint are
dropped, so the file reads as one uninterrupted run.

Reading (`read_metrics`, `series`, `last`, `best`): used by everything that
looks at a run afterwards (plotting, the demo, the sweep's `collect`,
scripts/replicate_paper.py, the tests). It imports neither JAX nor
TensorFlow for local files, so those commands start fast.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Iterable, Mapping

from big_distill import fileio

METRICS_FILE = "metrics.jsonl"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_X_KEYS = {"epoch": ("epoch", "progress/epoch"), "step": ("step",)}


def __getattr__(name):
  # tf.io.gfile (local or gs://) is loaded on first use: readers of local
  # files never pay TensorFlow's import.
  if name == "gfile":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile
  raise AttributeError(name)


def _is_remote(path: str) -> bool:
  return "://" in path


def open_file(path: str, mode: str = "r"):
  if _is_remote(path):
    return __getattr__("gfile").GFile(path, mode)
  return open(path, mode)


def _exists(path: str) -> bool:
  return __getattr__("gfile").exists(path) if _is_remote(path) else os.path.exists(path)


def metrics_path(workdir: str) -> str:
  return workdir.rstrip("/") + "/" + METRICS_FILE


def parse_rows(lines: Iterable[str]) -> tuple[list[dict[str, Any]], list[int]]:
  """(rows, numbers of the unreadable lines) of metrics.jsonl text.

  A killed run leaves a torn last line, and a run resumed after that appends
  its next line to the broken one: such lines are not JSON objects.
  """
  rows, bad = [], []
  for i, line in enumerate(lines, 1):
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
  return rows, bad


def read_metrics(workdir: str, *, missing_ok: bool = False, quiet: bool = False
                 ) -> list[dict[str, Any]]:
  """The rows of `WORKDIR/metrics.jsonl`, in file order (local or gs://).

  Unreadable lines are skipped with a printed note (unless `quiet`). A
  missing file raises FileNotFoundError naming the path, or gives [] with
  `missing_ok` (a cell that has not started).
  """
  path = metrics_path(workdir)
  if not _exists(path):
    if missing_ok:
      return []
    raise FileNotFoundError(
        f"No metrics file {path}: is {workdir} the --workdir of a big_distill run "
        "that has logged at least once?")
  with open_file(path) as f:
    rows, bad = parse_rows(f)
  if bad and not quiet:
    print(f"note: {path}: skipped {len(bad)} unreadable line(s): "
          f"{', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}")
  return rows


def number(v) -> float | None:
  """A logged value as a float ('nan'/'inf' strings included); None if not a number."""
  if isinstance(v, str):
    return _NON_FINITE.get(v.lower())
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    return float(v)
  return None


def series(rows: Iterable[dict[str, Any]], key: str, x: str = "epoch"
           ) -> tuple[list[float], list[float]]:
  """(xs, ys) of metric `key` against `x` ('epoch' or 'step'), ordered by step.

  A step logged twice keeps its last value: a run resumed from a checkpoint
  older than its last log repeats those steps, and the repeat is what the
  restored run computed.
  """
  by_step = {}
  for i, row in enumerate(rows):
    value = number(row.get(key))
    xv = next((number(row[k]) for k in _X_KEYS[x] if k in row), None)
    if value is not None and xv is not None:
      by_step[row.get("step", i)] = (xv, value)
  points = [by_step[s] for s in sorted(by_step)]
  return [p[0] for p in points], [p[1] for p in points]


def last(rows: Iterable[dict[str, Any]], key: str) -> float | None:
  """The value of `key` at the largest step that logged it."""
  ys = series(rows, key, "step")[1]
  return ys[-1] if ys else None


def lower_is_better(key: str) -> bool:
  """Losses, distances and calibration errors go down; accuracies go up."""
  name = key.rpartition("/")[2]
  return any(name.endswith(s) for s in ("loss", "kl", "euclidean", "ece", "entropy"))


def best(rows: Iterable[dict[str, Any]], key: str) -> float | None:
  """The best value of `key` over the run (min or max, per `lower_is_better`)."""
  ys = [y for y in series(rows, key, "step")[1] if math.isfinite(y)]
  if not ys:
    return None
  return min(ys) if lower_is_better(key) else max(ys)


def _write_lines(path: str, lines: list[str]) -> None:
  with fileio.atomic_write(path) as f:
    f.write("".join(lines))


def truncate_jsonl(path: str, last_step: int) -> list[str]:
  """Drops lines after `last_step` (and a torn line from a kill); returns the rest."""
  if not _exists(path):
    return []
  with open_file(path) as f:
    rows, _ = parse_rows(f)
  keep = [json.dumps(row) + "\n" for row in rows if row.get("step", 0) <= last_step]
  _write_lines(path, keep)
  return keep


class Writer:
  """Writes scalars to every sink; a no-op on processes other than 0."""

  def __init__(self, workdir: str, resume_step: int = 0, append: bool | None = None):
    import jax  # pylint: disable=g-import-not-at-top
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    self.main = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self._clu = metric_writers.create_default_writer(
        workdir, just_logging=not self.main, asynchronous=False)
    # Object stores (gs://) cannot append: there the whole file is rewritten
    # at each write (a few MB at most, and writes are rare).
    self._remote = ("://" in workdir) if append is None else not append
    self._disk_full = False  # Set by a write that found the disk full.
    self._file = None  # The local metrics.jsonl, appended to (process 0).
    if self.main:
      self._lines = truncate_jsonl(self.path, resume_step)
      if not self._remote:
        self._file = open(self.path, "a")

  def logged(self) -> dict[str, float]:
    """Every metric's newest value among the rows kept on resume (process 0)."""
    out = {}
    if self.main:
      for line in self._lines:
        out.update(json.loads(line))
      out.pop("step", None)
    return out

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    """Writes one row; a full disk is a `fileio.DiskFullError` (one clear message)."""
    metrics = {k: float(v) for k, v in metrics.items()}
    try:
      self._clu.write_scalars(step, metrics)
      if self.main:
        row = {"step": int(step)}
        row.update({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()})
        line = json.dumps(row) + "\n"
        if self._remote:
          self._lines.append(line)
          _write_lines(self.path, self._lines)
        else:
          self._file.write(line)
          self._file.flush()
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless the disk is full)
      if not fileio.no_room(e, self.path):
        raise
      self._disk_full = True
      raise fileio.DiskFullError(
          f"No space left on device while writing the metrics of step {step} to "
          f"{os.path.dirname(self.path)} (metrics.jsonl, TensorBoard events). The checkpoints "
          "are intact, and so are the metrics up to the newest checkpoint (a resume drops "
          "the rows after it). Free space on that file system (or move the workdir), then "
          "rerun the same command to resume.") from None

  def close(self) -> None:
    closers = [self._clu.close] + ([self._file.close] if self._file else [])
    if not self._disk_full:
      self._clu.flush()
      for close in closers:
        close()
      return
    for close in closers:  # Buffered rows cannot be written: drop them.
      try:
        close()
      except Exception:  # pylint: disable=broad-except
        pass


class Progress:
  """Steps/s, images/s/device, epoch, ETA and core-hours since the last call."""

  def __init__(self, total_steps: int, batch_size: int, steps_per_epoch: float,
               start_step: int):
    self.total = total_steps
    self.batch = batch_size
    self.steps_per_epoch = steps_per_epoch
    import jax  # pylint: disable=g-import-not-at-top
    self.devices = jax.device_count()
    self._t, self._step = time.perf_counter(), start_step
    self.core_hours = 0.0

  def measure(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    dt, ds = now - self._t, step - self._step
    self._t, self._step = now, step
    self.core_hours += dt * self.devices / 3600
    out = {"progress/epoch": step / self.steps_per_epoch,
           "progress/core_hours": self.core_hours}
    if ds > 0 and dt > 0:
      sps = ds / dt
      out.update({"progress/steps_per_sec": sps,
                  "progress/img_per_sec_per_device": sps * self.batch / self.devices,
                  "progress/eta_hours": (self.total - step) / sps / 3600})
    return out
