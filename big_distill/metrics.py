"""Where metrics go: TensorBoard + stdout (clu) and a `metrics.jsonl` file.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step,
`{"step": ..., "<name>": value, ...}`; on resume, lines from after the restored
checkpoint are dropped, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

import jax
from clu import metric_writers
import tensorflow as tf

gfile = tf.io.gfile


def _write_lines(path: str, lines: list[str]) -> None:
  tmp = path + ".tmp"
  with gfile.GFile(tmp, "w") as f:
    f.write("".join(lines))
  gfile.rename(tmp, path, overwrite=True)


def truncate_jsonl(path: str, last_step: int) -> list[str]:
  """Drops lines after `last_step` (and a torn line from a kill); returns the rest."""
  if not gfile.exists(path):
    return []
  keep = []
  with gfile.GFile(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if row.get("step", 0) <= last_step:
        keep.append(json.dumps(row) + "\n")
  _write_lines(path, keep)
  return keep


class Writer:
  """Writes scalars to every sink; a no-op on processes other than 0."""

  def __init__(self, workdir: str, resume_step: int = 0, append: bool | None = None):
    self.main = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._clu = metric_writers.create_default_writer(
        workdir, just_logging=not self.main, asynchronous=False)
    # Object stores (gs://) cannot append: there the whole file is rewritten
    # at each write (a few MB at most, and writes are rare).
    self._remote = ("://" in workdir) if append is None else not append
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
    metrics = {k: float(v) for k, v in metrics.items()}
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

  def close(self) -> None:
    self._clu.flush()
    self._clu.close()
    if self.main and not self._remote:
      self._file.close()


class Progress:
  """Steps/s, images/s/device, epoch, ETA and core-hours since the last call."""

  def __init__(self, total_steps: int, batch_size: int, steps_per_epoch: float,
               start_step: int):
    self.total = total_steps
    self.batch = batch_size
    self.steps_per_epoch = steps_per_epoch
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
