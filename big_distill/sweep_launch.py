"""Running a sweep's cells: one after another, resumable, locked, on any machine.

A cell is one workdir (see big_distill/sweep.py): `sweep_cell.json` records
what it is and how each of its runs went, `student.npz` (the trainer's last
write) marks it finished, and `sweep.lock`, held while a `--run` process runs
it, keeps several `--run` processes of one grid from running it twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shlex
import subprocess
import time
from typing import Any, Sequence

from big_distill import fileio

CELL_FILE = "sweep_cell.json"
LOCK_FILE = "sweep.lock"
CACHE_ENV, CACHE_DIR = "JAX_COMPILATION_CACHE_DIR", ".jax_cache"
FINISHED_FILE = "student.npz"
PREEMPTED_EXIT_CODE = 143  # big_distill.train's: stop the sweep, rerun later.


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


def read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}


def write_json(path: str, obj: dict) -> None:
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


def _record(cell: Any, workdir: str, cmd: list[str], extra: dict | None = None) -> dict:
  path = os.path.join(workdir, CELL_FILE)
  info = read_json(path)
  info.update({"name": cell.name, "config": cell.config_path, "args": cell.args,
               "overrides": cell.overrides, "swept": list(cell.swept),
               "command": shlex.join(cmd)})
  info.update(extra or {})
  write_json(path, info)
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


def run_cells(cells: Sequence[Any], root: str, passthrough: Sequence[str], python: str,
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
      previous = read_json(os.path.join(workdir, CELL_FILE))
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
