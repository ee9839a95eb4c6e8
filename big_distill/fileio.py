"""Files that a reader never sees half-written: write to a temporary, then rename.

A run can be killed at any moment (preemption, SIGKILL, a full disk). A file
written in place can then be left truncated, and the next run would read a
broken config.json, metrics file or checkpoint export. Renaming is atomic on
local file systems (and a copy-then-delete of a complete file on GCS), so the
file at `path` is always either the old one or the new one.
"""

from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator


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
