"""Checkpoints of the training state, with fallback to the previous one.

orbax writes each checkpoint into a temporary directory and renames it only
once complete, so a kill during a save never touches earlier checkpoints. A
checkpoint that still cannot be read (a disk that lost files, a truncated copy)
is reported, moved to `<directory>.unreadable/`, and the one before it is
used; a workdir that has checkpoints is never silently restarted from scratch.

A full disk is found before a save starts: the checkpoint's size is known
from the state's arrays, and a save that would not fit stops the run with
`DiskFullError` (exit code DISK_FULL_EXIT_CODE) before orbax writes anything.
A disk that still fills during a save (another writer took the space) stops
the run the same way, the failed save's files removed, the previous
checkpoint kept; orbax and TensorStore may log lines of their own then.
Each checkpoint records the device and process counts it was written on, so
that a resume on another cluster shape says so in the log; the arrays are
restored straight into the new mesh's shardings.

Everything goes through orbax's public API: the array handler that decides
replica-parallel saving is this Checkpointer's own (its own type-handler
registry), never orbax's process-wide one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from big_distill import errors
from big_distill import fileio


class CheckpointError(errors.CheckpointError):
  """No checkpoint of the workdir can be read (a UserError: one line, exit 2)."""


# Distinct from a crash (1), a user error (2), a non-finite loss (3) and a
# preemption (143): sysexits.h's EX_IOERR. The job is fine; the disk is not.
DISK_FULL_EXIT_CODE = 74
DiskFullError = fileio.DiskFullError
is_disk_full = fileio.is_disk_full

# What a checkpoint holds beyond its arrays' bytes (measured with orbax 0.12.8,
# OCDBT, incompressible float32): up to ~0.8 KiB per array (its metadata and
# index entries) and ~2 KiB per checkpoint, plus a block per file on disk.
PER_ARRAY_BYTES = 1 << 10
PER_CHECKPOINT_BYTES = 64 << 10


def tree_bytes(tree: Any) -> int:
  """Bytes of a tree of (global) arrays: what one checkpoint of it holds, uncompressed."""
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def checkpoint_bytes(tree: Any) -> int:
  """The space one checkpoint of `tree` needs on disk, at most (OCDBT may compress)."""
  return tree_bytes(tree) + PER_ARRAY_BYTES * len(jax.tree.leaves(tree)) + PER_CHECKPOINT_BYTES


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


def _type_handlers(replica_parallel: bool):
  """orbax's standard handlers, in a registry of this Checkpointer's own.

  `ArrayHandler(use_replica_parallel=...)` is how orbax's public API asks for
  (or against) replica-parallel saving; giving it in a registry passed to
  `PyTreeCheckpointHandler` leaves orbax's process-wide registry untouched.
  """
  th = ocp.type_handlers
  return th.create_type_handler_registry(
      (int, th.ScalarHandler()), (float, th.ScalarHandler()), (bytes, th.ScalarHandler()),
      (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()),
      (jax.Array, th.ArrayHandler(use_replica_parallel=replica_parallel)),
      (str, th.StringHandler()))


class Checkpointer:
  """Saves and restores one pytree of jax.Arrays (the training state)."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               replica_parallel: bool = True):
    """`replica_parallel`: orbax's replica-parallel saving (`config.ckpt_replica_parallel`).

    With it, the replicas of a replicated array each write a slice of it
    (which compiles slicing programs at the first save); without it, one
    replica writes the whole array. Both restore the same.
    """
    self.directory = directory
    self._in_flight: tuple[int, int] | None = None  # (step, bytes needed) of the save.
    self._before: set[str] = set()  # The directory's entries when that save started.
    self._failed = False
    # One pinned item handler: without it, a step directory that lost its
    # item makes the manager guess a multi-item layout and refuse every
    # other (intact) step. (It reads and writes what StandardCheckpointHandler
    # does: checkpoints of either restore with the other.)
    self._mngr = ocp.CheckpointManager(
        directory,
        item_handlers=ocp.PyTreeCheckpointHandler(
            type_handler_registry=_type_handlers(replica_parallel)),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save,
            create=True, cleanup_tmp_directories=True))

  def steps(self) -> list[int]:
    self._mngr.reload()
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts an (asynchronous) save; the arrays are copied before it returns.

    A save that the disk has no room for raises DiskFullError before anything
    is written. orbax reports a failed asynchronous save at the next save or
    wait; one that found the disk full then raises DiskFullError, naming the
    step whose save failed.
    """
    self.wait()  # orbax would wait for the previous save here too.
    needed = checkpoint_bytes(state)
    self._before = set(self._entries())
    self._check_room(step, needed)
    self._in_flight = (step, needed)
    with self._disk_full_as_error():
      self._mngr.save(step, args=ocp.args.PyTreeSave(state), force=True,
                      custom_metadata=topology())

  def _entries(self) -> list[str]:
    if jax.process_index() != 0 or not tf.io.gfile.isdir(self.directory):
      return []
    return [name.rstrip("/") for name in tf.io.gfile.listdir(self.directory)]

  def _check_room(self, step: int, needed: int) -> None:
    """Raises DiskFullError, on every process, if a checkpoint of `needed` bytes won't fit."""
    free = fileio.free_bytes(self.directory)
    fits = free is None or free >= needed
    if jax.process_count() > 1:  # One decision: a process alone in a save would hang.
      fits = bool(np.all(multihost_utils.process_allgather(np.int32(fits))))
    if not fits:
      self._in_flight = (step, needed)
      raise self._disk_full(written=False)

  @contextlib.contextmanager
  def _disk_full_as_error(self):
    """A failed save is a full disk when its errno says so or, for errors that
    carry none (TensorStore's), when once its files are removed the
    checkpoint does not fit (the check made before every save)."""
    try:
      yield
    except DiskFullError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless the disk is full)
      if not fileio.is_disk_full(e):
        self._remove_failed_save()
        _, needed = self._in_flight or (None, None)
        free = fileio.free_bytes(self.directory)
        if free is None or not needed or free >= needed:
          raise
      raise self._disk_full(written=True) from e

  def _remove_failed_save(self) -> None:
    """Removes what the failed save added to the directory (process 0 lists it)."""
    for name in sorted(set(self._entries()) - self._before):
      tf.io.gfile.rmtree(os.path.join(self.directory, name))

  def _disk_full(self, written: bool) -> DiskFullError:
    """The one-line error for a full disk; removes the failed save's files."""
    self._failed = True
    step, needed = self._in_flight or (None, None)
    if written:
      self._remove_failed_save()
    free = fileio.free_bytes(self.directory)
    free = f", {fileio.human_bytes(free)} free now" if free is not None else ""
    try:
      kept = [s for s in self.steps() if step is None or s < step]
    except Exception:  # pylint: disable=broad-except
      kept = []
    need = f" (it needs about {fileio.human_bytes(needed)}{free})" if needed else ""
    where = os.path.join(self.directory, str(step)) if step is not None else self.directory
    previous = (f"The previous checkpoint (step {kept[-1]}) and metrics.jsonl are intact"
                if kept else "There is no earlier checkpoint; metrics.jsonl is intact")
    done = "the partial save was removed" if written else "nothing of it was written"
    return DiskFullError(
        f"No space left on device while saving the checkpoint of step {step} to "
        f"{where}{need}. {previous}; {done}. Free space on that file system (or move "
        "the workdir), then rerun the same command to resume.")

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
        state = self._mngr.restore(step, args=ocp.args.PyTreeRestore(
            abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)))
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
