"""Checkpoints of the training state, with fallback to the previous one.

orbax writes each checkpoint into a temporary directory and renames it only
once complete, so a kill during a save never touches earlier checkpoints. A
checkpoint that still cannot be read (a disk that lost files, a truncated copy)
is reported, moved to `<directory>.unreadable/`, and the one before it is
used; a workdir that has checkpoints is never silently restarted from scratch.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
import tensorflow as tf


class CheckpointError(RuntimeError):
  pass


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


class Checkpointer:
  """Saves and restores one pytree of jax.Arrays (the training state)."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = directory
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
    """Starts an (asynchronous) save; the arrays are copied before it returns."""
    self._mngr.save(step, args=ocp.args.StandardSave(state), force=True)

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
      return step, state
    raise CheckpointError(
        f"None of the checkpoints in {self.directory} can be read:\n  "
        + "\n  ".join(errors) +
        "\nRefusing to start from scratch over them. Move the directory away to "
        "start a new run, or repair the checkpoints.")

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
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
