"""Checkpoints of the training state, with fallback to the previous one.

orbax writes each checkpoint into a temporary directory and renames it only
once complete, so a kill during a save never touches earlier checkpoints. A
checkpoint that still cannot be read (a disk that lost files, a truncated copy)
is reported, moved to `<directory>.unreadable/`, and the one before it is
used; a workdir that has checkpoints is never silently restarted from scratch.

A save that finds the disk full stops the run with `DiskFullError` (exit code
DISK_FULL_EXIT_CODE), its partial files removed, the previous checkpoint kept.
Each checkpoint records the device and process counts it was written on, so
that a resume on another cluster shape says so in the log; the arrays are
restored straight into the new mesh's shardings.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
from typing import Any

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
import tensorflow as tf

from big_distill import errors


class CheckpointError(errors.CheckpointError):
  """No checkpoint of the workdir can be read (a UserError: one line, exit 2)."""


# Distinct from a crash (1), a user error (2), a non-finite loss (3) and a
# preemption (143): sysexits.h's EX_IOERR. The job is fine; the disk is not.
DISK_FULL_EXIT_CODE = 74


class DiskFullError(OSError):
  """The file system ran out of space while a checkpoint was written."""

  def __init__(self, message: str):
    super().__init__(errno.ENOSPC, message)
    self.message = message

  def __str__(self):
    return self.message


_NO_SPACE = re.compile(r"No space left on device|os_error_code='?28\b|ENOSPC|"
                       r"Quota exceeded|EDQUOT")


def is_disk_full(e: BaseException) -> bool:
  """Whether `e` (or what caused it) is ENOSPC, as Python or tensorstore report it."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if _NO_SPACE.search(str(e)):
      return True
    e = e.__cause__ or e.__context__
  return False


class _QuietDiskFull(logging.Filter):
  """Drops the library reports of a full disk: DiskFullError reports it, once.

  orbax logs the failed write (through absl), and asyncio logs each of the
  save's other writes that failed the same way as "exception was never
  retrieved" (orbax gathers them and stops at the first).
  """

  def filter(self, record):
    if record.levelno < logging.ERROR:
      return True
    if "/orbax/" not in record.pathname and "/asyncio/" not in record.pathname:
      return True
    exc = record.exc_info[1] if record.exc_info else None
    return not (_NO_SPACE.search(record.getMessage()) or (exc and is_disk_full(exc)))


def _is_late_callback_on_closed_loop(exc_type, exc, tb) -> bool:
  """A C library's completion callback that found its asyncio loop closed.

  When a save fails, orbax's event loop stops at the first failed write while
  TensorStore still finishes the others; their completions then call
  `loop.call_soon_threadsafe` on the closed loop and TensorStore prints each
  RuntimeError as unraisable. Recognised by the exact shape: the traceback starts in
  asyncio's `call_soon_threadsafe` (called from C, so no Python caller) and
  ends in `_check_closed`.
  """
  if exc_type is not RuntimeError or str(exc) != "Event loop is closed" or tb is None:
    return False
  frames = []
  while tb is not None:
    frames.append(tb.tb_frame.f_code)
    tb = tb.tb_next
  return (frames[0].co_name == "call_soon_threadsafe" and frames[-1].co_name == "_check_closed"
          and all("asyncio" in f.co_filename for f in frames))


def _quiet_orbax_disk_full() -> None:
  for name in ("absl", "asyncio"):  # orbax logs through absl.logging.
    logger = logging.getLogger(name)
    if not any(isinstance(f, _QuietDiskFull) for f in logger.filters):
      logger.addFilter(_QuietDiskFull())
  hook = sys.unraisablehook
  if getattr(hook, "_big_distill_quiet", False):
    return

  def unraisablehook(unraisable):
    if _is_late_callback_on_closed_loop(unraisable.exc_type, unraisable.exc_value,
                                        unraisable.exc_traceback):
      return  # Harmless: the write it completes belongs to a save already reported.
    hook(unraisable)

  unraisablehook._big_distill_quiet = True  # pylint: disable=protected-access
  sys.unraisablehook = unraisablehook


def _human(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n} B"


def tree_bytes(tree: Any) -> int:
  """Bytes of a tree of (global) arrays: what one checkpoint of it holds, uncompressed."""
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def topology() -> dict[str, int]:
  return {"device_count": jax.device_count(), "process_count": jax.process_count()}


def _move_dir(src: str, dst: str) -> None:
  """A rename where the file system has one, else copy then delete (GCS)."""
  try:
    tf.io.gfile.rename(src, dst)
    return
  except (tf.errors.OpError, OSError):
    pass
  for root, _, files in tf.io.gfile.walk(src):
    target = os.path.join(dst, os.path.relpath(root, src))
    tf.io.gfile.makedirs(target)
    for name in files:
      tf.io.gfile.copy(os.path.join(root, name), os.path.join(target, name), overwrite=True)
  tf.io.gfile.rmtree(src)


def _use_replica_parallel(on: bool) -> None:
  handler = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(handler, "_use_replica_parallel", None) != on:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=on), override=True)


class Checkpointer:
  """Saves and restores one pytree of jax.Arrays (the training state)."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               replica_parallel: bool = True):
    """`replica_parallel`: orbax's replica-parallel saving (`config.ckpt_replica_parallel`).

    orbax reads it from its process-wide handler of jax.Arrays, so the newest
    Checkpointer's choice holds for every save of this process.
    """
    self.directory = directory
    _use_replica_parallel(replica_parallel)
    self._in_flight: tuple[int, int] | None = None  # (step, bytes) of the async save.
    self._failed = False
    _quiet_orbax_disk_full()
    # One pinned item handler: without it, a step directory that lost its
    # item makes the manager guess a multi-item layout and refuse every
    # other (intact) step.
    self._mngr = ocp.CheckpointManager(
        directory,
        item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save,
            create=True, cleanup_tmp_directories=True))

  def steps(self) -> list[int]:
    self._mngr.reload()
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts an (asynchronous) save; the arrays are copied before it returns.

    orbax reports a failed asynchronous save at the next save or wait; a full
    disk then raises DiskFullError, naming the step whose save failed.
    """
    with self._disk_full_as_error():
      self._mngr.save(step, args=ocp.args.StandardSave(state), force=True,
                      custom_metadata=topology())
    self._in_flight = (step, tree_bytes(state))

  @contextlib.contextmanager
  def _disk_full_as_error(self):
    try:
      yield
    except DiskFullError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless ENOSPC)
      if not is_disk_full(e):
        raise
      raise self._disk_full(e) from e

  def _disk_full(self, e: BaseException) -> DiskFullError:
    """The one-line error for a full disk; removes the failed save's partial files."""
    self._failed = True
    step, needed = self._in_flight or (None, None)
    m = re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(e))
    if m:
      step = int(m[1])
    partial = []
    if jax.process_index() == 0 and tf.io.gfile.isdir(self.directory):
      for name in tf.io.gfile.listdir(self.directory):
        name = name.rstrip("/")
        if ".orbax-checkpoint-tmp" in name and (step is None or name.startswith(f"{step}.")):
          partial.append(os.path.join(self.directory, name))
          tf.io.gfile.rmtree(partial[-1])
    free = ""
    if "://" not in self.directory:
      try:
        free = f", {_human(shutil.disk_usage(self.directory).free)} free now"
      except OSError:
        pass
    try:
      kept = [s for s in self.steps() if step is None or s < step]
    except Exception:  # pylint: disable=broad-except
      kept = []
    need = f" (it needs about {_human(needed)}{free})" if needed else ""
    where = os.path.join(self.directory, str(step)) if step is not None else self.directory
    previous = (f"The previous checkpoint (step {kept[-1]}) and metrics.jsonl are intact"
                if kept else "There is no earlier checkpoint; metrics.jsonl is intact")
    return DiskFullError(
        f"No space left on device while saving the checkpoint of step {step} to "
        f"{where}{need}. {previous}; the partial save was removed. Free space on that "
        "file system (or move the workdir), then rerun the same command to resume.")

  def restore(self, target: Any) -> tuple[int, Any] | None:
    """Restores the newest readable checkpoint into `target`'s shardings.

    `target` is a tree of jax.ShapeDtypeStruct with shardings (or arrays).
    Returns None when there is no checkpoint at all.
    """
    steps = self.steps()
    if not steps:
      return None
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    errors = []
    for step in reversed(steps):
      try:
        state = self._mngr.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # orbax raises many kinds for a damaged step.
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        logging.error("Checkpoint at step %d in %s cannot be read (%s); "
                      "falling back to the previous one.", step, self.directory, msg)
        errors.append(f"step {step}: {msg}")
        continue
      if errors:
        logging.warning("Resumed from step %d; newer unreadable checkpoints: %s",
                        step, "; ".join(errors))
        self._move_aside([s for s in steps if s > step])
      self._log_topology_change(step, target)
      return step, state
    raise CheckpointError(
        f"None of the checkpoints in {self.directory} can be read:\n  "
        + "\n  ".join(errors) +
        "\nRefusing to start from scratch over them. Move the directory away to "
        "start a new run, or repair the checkpoints.")

  def saved_topology(self, step: int) -> dict[str, int] | None:
    """The device and process counts the checkpoint at `step` was written on."""
    try:
      meta = self._mngr.metadata(step)
    except Exception:  # pylint: disable=broad-except  (checkpoints before this field)
      return None
    custom = getattr(meta, "custom_metadata", None) or {}
    return custom if "device_count" in custom else None

  def _log_topology_change(self, step: int, target: Any) -> None:
    saved, now = self.saved_topology(step), topology()
    if saved is None or saved == now:
      return
    meshes = {getattr(x.sharding, "mesh", None) for x in jax.tree.leaves(target)} - {None}
    mesh = f" over the mesh {dict(next(iter(meshes)).shape)}" if len(meshes) == 1 else ""
    logging.warning(
        "The device count changed: the checkpoint at step %d was written on %d devices "
        "(%d processes), this run has %d devices (%d processes). Its arrays were "
        "restored into the new shardings%s; the global batch size is the config's, "
        "the data stream goes on at step %d. Results match the old layout up to float "
        "rounding (reductions run in another order).", step, saved["device_count"],
        saved["process_count"], now["device_count"], now["process_count"], mesh, step + 1)

  def _move_aside(self, bad_steps: list[int]) -> None:
    """Moves unreadable steps out of the way (kept, never deleted).

    Left in place they would block saving the same step again on this run.
    """
    aside = self.directory.rstrip("/") + ".unreadable"
    if jax.process_index() == 0:
      tf.io.gfile.makedirs(aside)
      for s in bad_steps:
        src = os.path.join(self.directory, str(s))
        dst = os.path.join(aside, str(s))
        n = 1
        while tf.io.gfile.exists(dst):
          dst, n = os.path.join(aside, f"{s}.{n}"), n + 1
        _move_dir(src, dst)
        logging.warning("Moved the unreadable checkpoint %s to %s.", src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("big_distill.checkpoint.move_aside")
    self._mngr.reload()

  def wait(self) -> None:
    with self._disk_full_as_error():
      self._mngr.wait_until_finished()

  def close(self) -> None:
    already = self._failed  # Reported once: the run stops with the first report.
    try:
      with self._disk_full_as_error():
        self._mngr.wait_until_finished()
    except DiskFullError:
      if not already:
        raise
    finally:
      try:
        self._mngr.close()
      except Exception:  # pylint: disable=broad-except
        if not self._failed:
          raise
