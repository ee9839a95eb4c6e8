r"""Trains a student by function matching, or any model with labels.

    python -m big_distill.train --config=configs/flowers_r50.py:variant=fast \
        [--workdir=DIR] [--config.lr=0.001 ...]

Distillation when `config.teachers` names teachers; supervised training (or
fine-tuning, e.g. of a BiT-M teacher) when it is empty. Without `--workdir`
the run goes to `workdirs/<config name>[_<config args>]` under the current
folder. Rerunning the same command resumes from the workdir. `train()` reads
top to bottom: checks, the set-up (checks, model_set, plan, setup, weights,
feeding: shared with benchmark and evaluate), teachers, checkpoint,
evaluators, the loop.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections as mlc
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

from big_distill import checkpoint as ckpt_lib
from big_distill import config_lib
from big_distill import errors
from big_distill import fileio
from big_distill import metrics as metrics_lib
from big_distill import parallel
from big_distill import checks
from big_distill import feeding
from big_distill import model_set
from big_distill import plan
from big_distill import precompute
from big_distill import setup
from big_distill import weights
from big_distill import workdir as workdir_lib

gfile = tf.io.gfile

# Older callers import it from here; it lives in errors.py.
ConfigError = errors.ConfigError


# ---- Checks of the workdir ---------------------------------------------------


def check_workdir(workdir: str, config: mlc.ConfigDict) -> None:
  """Refuses unwritable workdirs and workdirs of another config.

  Writes (and removes) one probe file to test that the workdir is writable;
  leaves everything else as it was.
  """
  try:
    gfile.makedirs(workdir)
    probe = os.path.join(workdir, f".write_test.{jax.process_index()}")
    with gfile.GFile(probe, "w") as f:
      f.write("ok")
    gfile.remove(probe)
  except (OSError, tf.errors.OpError) as e:
    raise ConfigError(f"--workdir={workdir} is not writable ({e}). Choose another "
                      "directory or fix its permissions.") from None
  path = os.path.join(workdir, "config.json")
  if gfile.exists(path):
    with gfile.GFile(path) as f:
      old = json.load(f)
    diff = workdir_lib.config_diff(old, json.loads(config.to_json_best_effort()))
    if diff and not config.allow_config_change:
      raise ConfigError(
          f"--workdir={workdir} holds a run of a different config:\n  " + "\n  ".join(diff[:10])
          + "\nUse a new workdir, or pass --config.allow_config_change=True to resume it "
          "with the new config.")


def record_config(workdir: str, config: mlc.ConfigDict) -> None:
  """Writes the resolved config.json, once every check has passed.

  Written any earlier, a run refused for a later check would leave a
  config.json that makes the corrected rerun look like "a different config".
  """
  if jax.process_index() == 0:
    with fileio.atomic_write(os.path.join(workdir, "config.json")) as f:
      json.dump(json.loads(config.to_json_best_effort()), f, indent=2, sort_keys=True)


# ---- Checkpoints -------------------------------------------------------------


def open_checkpointer(workdir: str, config: mlc.ConfigDict) -> ckpt_lib.Checkpointer:
  return ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_ckpts,
                               replica_parallel=config.ckpt_replica_parallel)


def restore_or_init(ckpt: ckpt_lib.Checkpointer, s: setup.TrainSetup,
                    student_init) -> tuple[int, dict]:
  """(first step, state): the newest readable checkpoint, else a fresh state."""
  restored = ckpt.restore(s.checkpoint_state)
  if restored is not None:
    logging.info("Resumed from the checkpoint at step %d.", restored[0])
    return restored[0], setup.from_checkpoint(restored[1])
  state = s.init_state(jax.random.key(s.config.seed))
  if student_init is not None:
    state = setup.with_params(s, state, student_init)
  return 0, state


def export_student(workdir: str, config: mlc.ConfigDict, state, mesh) -> None:
  """The final student as `student.npz`: what distillation and evaluate read.

  Its family's `save` of the student's variables, in its default layout (a
  student with batch statistics is saved with them: inference needs the
  running averages).
  """
  variables = parallel.to_host(setup.student_weights(state), mesh)  # Collective: every process.
  if jax.process_index() == 0:
    path = os.path.join(workdir, "student.npz")
    model_set.model_module(config.student_name).save(variables, path)
    logging.info("Wrote %s.", path)
    print(f"Student: {path} (as a teacher: --config.t1_init={path}).", flush=True)


# ---- The loop's helpers ------------------------------------------------------


class _Preemption:
  """Turns SIGTERM into a flag the loop checks, so it can save and exit."""

  def __init__(self):
    self.requested = False
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("Signal %d: saving a checkpoint, then exiting.", signum)
    self.requested = True


class NonFiniteLossError(FloatingPointError):
  pass


class Preempted(Exception):
  """SIGTERM arrived; the state at `step` is saved. Rerun the command to resume."""

  def __init__(self, step: int):
    super().__init__(f"Preempted at step {step}; checkpoint saved. Rerun the same "
                     "command to resume.")
    self.step = step


# A preempted run exits like a shell reports a TERM-killed job (128 + 15), so
# that schedulers and wrapper scripts see it did not finish, and requeue it.
PREEMPTED_EXIT_CODE = 143


class _TrainLog:
  """Training metrics, fetched one step late and written every `log` steps.

  One step late: the next step is already queued on the device, so waiting
  for this one's loss does not leave the accelerator idle.
  """

  def __init__(self, writer, progress, d: plan.Durations):
    self.writer, self.progress, self.d = writer, progress, d
    self.last: dict[str, float] = writer.logged()  # For the NaN message, also after a resume.
    self.pending = None  # (step, metrics on device).

  def add(self, step: int, metrics) -> None:
    self.flush()
    self.pending = (step, metrics)

  def flush(self) -> None:
    if self.pending is None:
      return
    (step, m), self.pending = self.pending, None
    loss = float(jax.device_get(m["train/loss"]))
    if not np.isfinite(loss):
      raise NonFiniteLossError(
          f"Non-finite training loss {loss} at step {step}. Last logged metrics: "
          f"{json.dumps(self.last, sort_keys=True)}. The last good checkpoint is kept; "
          "lower config.lr or check the data, then rerun to resume.")
    if step % self.d.log == 0 or step == self.d.total:
      out = {k: float(v) for k, v in jax.device_get(m).items()}
      out.update(self.progress.measure(step))
      self.write(step, out)

  def write(self, step: int, out: dict[str, float]) -> None:
    self.writer.write(step, out)
    self.last.update(out)


# ---- Training ----------------------------------------------------------------


def train(config: mlc.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs (or resumes) the training of `config` in `workdir`; returns the last metrics."""
  # ---- Checks that cost nothing: config, data, files, workdir -----------
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)  # orbax wants absolute paths.
  checks.check_config(config)
  models = model_set.build_models(config)
  checks.check_data(config)
  checks.check_inits(config)
  check_workdir(workdir, config)

  # ---- Mesh, durations and the update step (abstract: nothing allocated) -
  mesh = plan.make_mesh(config)
  logging.info("mesh %s over %d devices (%d processes).", dict(mesh.shape),
               jax.device_count(), jax.process_count())
  d = plan.durations(config)
  s = setup.build(config, models, mesh, total_steps=d.total, warmup_steps=d.warmup)
  shardings = jax.tree.leaves(s.state_sharding["variables"]["params"])
  logging.info("Student: %d of %d parameter arrays sharded over fsdp.",
               sum(sh.spec != jax.sharding.PartitionSpec() for sh in shardings), len(shardings))

  # ---- Teachers and the student's start, checked before any compile -----
  teacher_params = weights.load_teachers(config, models, mesh)
  student_init = weights.load_student_init(config, models)
  train_data = feeding.prepare_train_data(config, mesh)  # Decoded / device caches.
  lock = workdir_lib.acquire(workdir)  # A second launch on this workdir stops here.
  record_config(workdir, config)  # Every check passed: the workdir is this config's.

  # ---- Fixed teachers: their outputs, computed once (or read back) ------
  tables = None
  if config.distill.fixed:
    tables = precompute.load_or_compute(config, models, mesh, teacher_params, workdir)

  # ---- Initial state, or the checkpoint; evaluators ---------------------
  ckpt = open_checkpointer(workdir, config)
  first_step, state = restore_or_init(ckpt, s, student_init)
  evaluators = feeding.make_evaluators(config, models, mesh)

  # ---- Train loop -------------------------------------------------------
  writer = metrics_lib.Writer(workdir, resume_step=first_step)
  log = _TrainLog(writer, metrics_lib.Progress(d.total, config.input.batch_size,
                                               d.steps_per_epoch, first_step), d)
  preemption = _Preemption()
  batches = feeding.train_batches(config, mesh, first_step, train_data, tables)
  profiling = False
  step = first_step
  try:
    for step in range(first_step + 1, d.total + 1):
      if step == config.profile.first_step and jax.process_index() == 0:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
        profiling = True
      state, m = s.train_step(state, teacher_params, next(batches))
      log.add(step, m)
      if profiling and step >= config.profile.first_step + config.profile.num_steps:
        jax.profiler.stop_trace()
        profiling = False
      evals_now = [e for e in evaluators if step % d.evals[e.name] == 0 or step == d.total]
      preempted = preemption.requested  # Read once: the signal may come at any time.
      save_now = step % d.ckpt == 0 or step == d.total or preempted
      if evals_now or save_now:
        log.flush()  # Before saving: never checkpoint a non-finite state.
      # A step's evaluations are written before its checkpoint exists: a kill
      # between the two resumes from the previous checkpoint and evaluates
      # again, instead of resuming past evaluations that were never written
      # (at the last step: a run without its final test numbers). The save is
      # asynchronous either way. A preemption saves first: its grace period
      # is for the checkpoint.
      saved = False
      if save_now and preempted:
        ckpt.save(step, setup.to_checkpoint(state))
        saved = True
      if evals_now:
        results = {"progress/epoch": step / d.steps_per_epoch}
        for e in evals_now:
          results.update(e.run(setup.student_weights(state), teacher_params))
        log.write(step, results)
      if (save_now or preemption.requested) and not saved:
        if not (evals_now or save_now):
          log.flush()  # A preemption that came during this step.
        ckpt.save(step, setup.to_checkpoint(state))
      if preemption.requested:
        break  # Reported by main() as `Preempted`, after the save completes.
    log.flush()
  finally:
    if profiling:
      jax.profiler.stop_trace()
    ckpt.close()
    writer.close()
    lock.release()

  if preemption.requested:
    raise Preempted(step)
  if step == d.total:
    export_student(workdir, config, state, mesh)
  return log.last


# ---- The command -------------------------------------------------------------


def define_flags(values: flags.FlagValues | None = None) -> None:
  """The command's flags (only when run as a command: importing defines none)."""
  values = values if values is not None else flags.FLAGS
  config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/flowers_r50.py:variant=fast.",
      flag_values=values, lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints and logs go (default: "
                      "workdirs/<config name>[_<config args>] in the current folder).",
                      flag_values=values)
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0, for multi-process runs "
                      "outside TPU pods / SLURM (auto-detected there).", flag_values=values)
  flags.DEFINE_integer("num_processes", None, "Number of processes.", flag_values=values)
  flags.DEFINE_integer("process_id", None, "This process's index.", flag_values=values)


def main(argv):
  del argv
  f = flags.FLAGS
  if not f["config"].present:
    raise app.UsageError("Give --config=configs/X.py[:args] (and optionally --workdir=DIR).")
  workdir = f.workdir or config_lib.default_workdir(config_flags.get_config_filename(f["config"]))
  logging.info("Workdir: %s", os.path.abspath(workdir) if "://" not in workdir else workdir)
  try:
    parallel.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    if jax.process_index() != 0:
      logging.set_verbosity(logging.WARNING)
    try:
      train(f.config, workdir)  # The config file runs here: its errors are caught too.
    except BaseException:
      parallel.stop_if_a_peer_is_lost()  # A collective that failed with its peer.
      raise
    parallel.finished()
  except Preempted as e:
    logging.warning("%s", e)
    sys.exit(PREEMPTED_EXIT_CODE)
  except ckpt_lib.DiskFullError as e:  # Before UserError: a distinct exit code.
    logging.error("%s", e)
    print(f"big_distill.train: error: {e}", file=sys.stderr)
    sys.exit(ckpt_lib.DISK_FULL_EXIT_CODE)
  except (errors.UserError, ckpt_lib.CheckpointError, NonFiniteLossError) as e:
    logging.error("%s", e)
    print(f"big_distill.train: error: {e}", file=sys.stderr)
    sys.exit(3 if isinstance(e, NonFiniteLossError) else 2)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=config_lib.flags_parser("big_distill.train"))
