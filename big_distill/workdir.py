"""Who owns a workdir: its lock, and whether its config.json is this config's.

Two trainers writing one workdir (a job scheduled twice, a typo in a script)
would corrupt each other's checkpoints and metrics, so a run holds its workdir
for as long as it trains. The lock must never outlive its run: a rerun after a
crash or a `kill -9` is the normal way to resume and is never refused.

* Local and network file systems (POSIX paths): process 0 holds an exclusive
  `flock` on `<workdir>/lock`. The kernel drops it when the process dies, by
  any signal, so there is nothing to clean up. On Linux NFS (v4, or v3 with
  lockd) flock is a POSIX lock taken on the server, so it also holds between
  hosts. The file records the holder's host, pid and command, for the message
  the second run prints.
* Object stores (`gs://...`) and file systems without flock: a lease. The
  holder rewrites `<workdir>/lock` every LEASE_S / 4 seconds; a lock not
  renewed for LEASE_S (a crashed holder) is taken over, and one held by a dead
  pid on this very host at once. Object stores have no atomic create, so two
  runs started within about a second of each other may both start; a second
  launch while the first runs is refused.

Only process 0 of a job takes the lock (the job's other processes are the
same run); it tells the others the outcome, so that every process of a
refused job stops with the same message.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from big_distill import config_lib
from big_distill.errors import WorkdirError



def _tf():
  """TensorFlow, for its gfile (gs:// and other remote workdirs): imported only
  where a lease is used, so that taking a local workdir's lock costs no import."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf

LOCK_NAME = "lock"
LEASE_S = 120.0  # Object-store lease: a crashed holder's lock expires after this.

# Locks held by this process, by workdir: a later train() in the same process
# (a notebook, a test) takes over its own earlier, unreleased lock.
_HELD: dict[str, "WorkdirLock"] = {}
_HELD_GUARD = threading.Lock()
_OUTCOME_BYTES = 4096  # A refusal's message, as shared with the other processes.


# ---- Config compatibility on resume ----------------------------------------


_ABSENT = object()


def _json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _default_at(defaults: dict, eval_default: dict, path: tuple[str, ...]) -> Any:
  """The default of the field at `path`: config_lib.base()'s or its sub-config's."""
  node: Any = defaults
  for i, key in enumerate(path):
    if i == 1 and path[0] == "evals":
      node = eval_default  # Each evaluator is a config_lib.eval_config().
      continue
    if not isinstance(node, dict) or key not in node:
      return _ABSENT
    node = node[key]
  return node


def config_diff(old: dict, new: dict, ignore=("allow_config_change",)) -> list[str]:
  """The differences that make `new` another run than `old` (config.json dicts).

  A field that `old` lacks is no difference when `new` holds its default:
  code that later adds a field to config_lib.base() must not block resuming
  the runs recorded before it. A non-default value there still differs.
  """
  defaults = _json(config_lib.base())
  eval_default = _json(config_lib.eval_config())
  old = _migrated(old)
  ignore = (*ignore, *config_lib.unused_teacher_fields(old, new))  # Never read: no difference.
  out = []

  def walk(a, b, path):
    for k in sorted(set(a) | set(b)):
      if not path and k in ignore:
        continue
      x, y = a.get(k, _ABSENT), b.get(k, _ABSENT)
      where = path + (k,)
      if isinstance(x, dict) and isinstance(y, dict):
        walk(x, y, where)
      elif x is _ABSENT and _is_default(y, _default_at(defaults, eval_default, where)):
        continue
      elif x != y:
        show = lambda v: "<absent>" if v is _ABSENT else repr(v)
        out.append(f"{'.'.join(where)}: {show(x)} -> {show(y)}")

  walk(old, new, ())
  return out


def _migrated(old: dict) -> dict:
  """`old` with fields renamed since it was written, under their new names.

  input.cache_raw (bool) became input.cache: True = "encoded", False = "none".
  """
  inp = old.get("input")
  if isinstance(inp, dict) and "cache_raw" in inp and "cache" not in inp:
    inp = {k: v for k, v in inp.items() if k != "cache_raw"}
    inp["cache"] = "encoded" if old["input"]["cache_raw"] else "none"
    old = {**old, "input": inp}
  return old


def _is_default(value, default) -> bool:
  if default is _ABSENT:
    return False
  if isinstance(value, dict) and isinstance(default, dict):
    return all(k in default and _is_default(v, default[k]) for k, v in value.items())
  return value == default


# ---- The lock ---------------------------------------------------------------


def _holder_info(token: str) -> dict[str, Any]:
  return {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
          "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
          "processes": jax.process_count(),
          "command": " ".join(sys.argv)[:1000]}


def _describe(info: dict[str, Any]) -> str:
  if not info:
    return "another run (it has not written its host and pid yet)"
  return (f"process {info.get('pid', '?')} on host {info.get('host', '?')} "
          f"(started {info.get('started', '?')}: {info.get('command', '?')})")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _refusal(workdir: str, info: dict[str, Any], extra: str = "") -> WorkdirError:
  return WorkdirError(
      f"--workdir={workdir} is in use by {_describe(info)}. Two runs on one workdir "
      f"would corrupt its checkpoints. Wait for that run to end, stop it, or use "
      f"another --workdir.{extra}")


class WorkdirLock:
  """A held workdir; `release()` when the run ends (a crash releases it too)."""

  def __init__(self, workdir: str, lease_s: float = LEASE_S, mode: str | None = None):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.lease_s = float(lease_s)
    self.mode = mode or ("lease" if "://" in workdir else "flock")
    self.token = uuid.uuid4().hex
    self._fd: int | None = None
    self._stop = threading.Event()
    self._renewer: threading.Thread | None = None

  # flock: the kernel holds the lock for exactly the life of the process.
  def _acquire_flock(self) -> bool:
    import fcntl  # pylint: disable=g-import-not-at-top
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with os.fdopen(os.dup(fd)) as f:
        text = f.read()
      os.close(fd)
      try:
        info = json.loads(text) if text.strip() else {}
      except json.JSONDecodeError:
        info = {}
      raise _refusal(self.workdir, info) from None
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        logging.warning("%s: the file system does not support flock (%s); using a "
                        "%d s lease instead.", self.path, e, self.lease_s)
        return False
      raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder_info(self.token), indent=1).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return True

  # lease: for object stores, renewed by a thread, expires when not renewed.
  def _read_lease(self) -> dict[str, Any] | None:
    try:
      with _tf().io.gfile.GFile(self.path) as f:
        return json.loads(f.read() or "{}")
    except (_tf().errors.NotFoundError, FileNotFoundError):
      return None
    except json.JSONDecodeError:
      return {}

  def _write_lease(self) -> None:
    info = {**_holder_info(self.token), "renewed": time.time(), "lease_s": self.lease_s}
    with _tf().io.gfile.GFile(self.path, "w") as f:
      f.write(json.dumps(info, indent=1))

  def _acquire_lease(self) -> None:
    info = self._read_lease()
    if info:
      age = time.time() - float(info.get("renewed", 0))
      same_host_dead = (info.get("host") == socket.gethostname()
                        and not _pid_alive(int(info.get("pid", -1))))
      if not same_host_dead and age < float(info.get("lease_s", self.lease_s)):
        left = float(info.get("lease_s", self.lease_s)) - age
        raise _refusal(self.workdir, info, (
            f" Its lease was renewed {age:.0f} s ago; if that run is dead, the "
            f"workdir is free again in {left:.0f} s (or delete {self.path})."))
      logging.warning("Taking over the expired lock of %s in %s.", _describe(info),
                      self.workdir)
    self._write_lease()
    # No atomic create on object stores: a run that wrote at the same moment
    # wins or loses here, by whose token the file holds a moment later.
    time.sleep(min(1.0, self.lease_s / 10))
    now = self._read_lease() or {}
    if now.get("token") != self.token:
      raise _refusal(self.workdir, now)
    self._renewer = threading.Thread(target=self._renew, daemon=True,
                                     name="big_distill.workdir_lease")
    self._renewer.start()

  def _renew(self) -> None:
    while not self._stop.wait(self.lease_s / 4):
      try:
        info = self._read_lease() or {}
        if info.get("token") not in (None, self.token):
          logging.error("The lock of %s was taken over by %s while this run held it "
                        "(was this process suspended for over %d s?).", self.workdir,
                        _describe(info), self.lease_s)
          return
        self._write_lease()
      except (OSError, _tf().errors.OpError) as e:  # Retried at the next renewal.
        logging.warning("Could not renew the lock %s: %s", self.path, e)

  def acquire(self) -> "WorkdirLock":
    if self.mode == "flock" and self._acquire_flock():
      return self
    self.mode = "lease"
    self._acquire_lease()
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # Drops the flock; the file stays (harmless, reused).
      self._fd = None
    if self._renewer is not None:
      self._stop.set()
      self._renewer.join()
      self._renewer = None
      if (self._read_lease() or {}).get("token") == self.token:
        _tf().io.gfile.remove(self.path)
    with _HELD_GUARD:
      if _HELD.get(self._key()) is self:
        del _HELD[self._key()]

  def _key(self) -> str:
    return self.workdir if "://" in self.workdir else os.path.realpath(self.workdir)

  @property
  def held(self) -> bool:
    return self._fd is not None or self._renewer is not None


class _NotHeld:
  """What the processes other than 0 get: process 0 holds the job's lock."""

  held = False

  def release(self) -> None:
    pass


def acquire(workdir: str, lease_s: float = LEASE_S) -> WorkdirLock | _NotHeld:
  """Holds `workdir` for this run, or raises WorkdirError naming its holder.

  Call it on every process, after the checks and before anything is written.
  """
  error = ""
  lock: WorkdirLock | _NotHeld = _NotHeld()
  if jax.process_index() == 0:
    key = os.path.realpath(workdir) if "://" not in workdir else workdir
    with _HELD_GUARD:
      previous = _HELD.pop(key, None)
    if previous is not None:
      previous.release()
    try:
      lock = WorkdirLock(workdir, lease_s).acquire()
      with _HELD_GUARD:
        _HELD[key] = lock
    except WorkdirError as e:
      error = str(e)
  if jax.process_count() > 1:
    error = _share_outcome(error)
  if error:
    raise WorkdirError(error)
  return lock


def _share_outcome(error: str) -> str:
  """Process 0's outcome, on every process (a broadcast: every process calls it)."""
  data = error.encode()[:_OUTCOME_BYTES]
  text = np.zeros(_OUTCOME_BYTES, np.uint8)
  text[:len(data)] = np.frombuffer(data, np.uint8)
  shared = multihost_utils.broadcast_one_to_all(
      {"length": np.int32(len(data)), "text": text})
  n = int(shared["length"])
  return np.asarray(shared["text"][:n], np.uint8).tobytes().decode(errors="ignore")
