"""Files that a reader never sees half-written: write to a temporary, then rename.

A run can be killed at any moment (preemption, SIGKILL, a full disk). A file
written in place can then be left truncated, and the next run would read a
broken config.json, metrics file or checkpoint export. Renaming is atomic on
local file systems (and a copy-then-delete of a complete file on GCS), so the
file at `path` is always either the old one or the new one.

A full disk is one clear error (`DiskFullError`), whoever hit it. It is told
by the errno of an OSError anywhere in an exception's chain (`__cause__`,
`__context__`) or, for libraries that report a failed write without one
(TensorStore, TensorFlow: their errors carry the errno only in their text,
which is not parsed here), by the file system itself: `no_room` for small
writes (metrics), checkpoint.py's own test for a checkpoint (does it still
fit, once the failed save's files are removed).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
from typing import IO, Iterator

# A small write (a metrics row) failed on a file system with less free space
# than this: the disk is full (such a write leaves it at 0, or within a block).
FULL_BELOW_BYTES = 1 << 20


class DiskFullError(OSError):
  """The file system ran out of space (exit code 74, one line: see main())."""

  def __init__(self, message: str):
    super().__init__(errno.ENOSPC, message)
    self.message = message

  def __str__(self):
    return self.message


def is_disk_full(e: BaseException) -> bool:
  """Whether `e`, or what caused it, is an OSError ENOSPC or EDQUOT."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    e = e.__cause__ or e.__context__
  return False


def free_bytes(path: str) -> int | None:
  """Free space (for this user) on the file system of `path`; None where unknown.

  `path` need not exist yet: its nearest existing parent is asked. None for
  object stores (gs://), which have no such thing.
  """
  if _remote(path):
    return None
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def no_room(e: BaseException, path: str) -> bool:
  """Whether the write to `path` that raised `e` failed for want of space."""
  if is_disk_full(e):
    return True
  free = free_bytes(path)
  return free is not None and free < FULL_BELOW_BYTES


def human_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n} B"


def _remote(path: str) -> bool:
  return "://" in path


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
  """`with atomic_write(path) as f: f.write(...)`: `path` appears only when complete.

  `mode` is "w" (text) or "wb" (bytes). If the body raises, `path` is left as
  it was and the temporary is removed. Local paths use the os (no TensorFlow
  import: light readers like metrics.py use this too); gs:// goes through
  tf.io.gfile.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', not {mode!r}.")
  # One temporary per process: several processes may write the same path.
  tmp = f"{path}.tmp.{os.getpid()}"
  if _remote(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    gfile = tf.io.gfile
    opener, rename, exists, remove = gfile.GFile, (
        lambda a, b: gfile.rename(a, b, overwrite=True)), gfile.exists, gfile.remove
    errors = (tf.errors.OpError, OSError)
  else:
    opener, rename, exists, remove, errors = open, os.replace, os.path.exists, os.remove, (OSError,)
  try:
    with opener(tmp, mode) as f:
      yield f
    rename(tmp, path)
  except BaseException:
    with contextlib.suppress(*errors):
      if exists(tmp):
        remove(tmp)
    raise


def write_npz(path: str, arrays: dict) -> None:
  """`arrays` as an `.npz` at `path`, written aside then renamed: a kill
  mid-write never leaves a torn file where a finished one is expected."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  with atomic_write(path, "wb") as f:
    f.write(buf.getvalue())
