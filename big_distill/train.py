r"""Trains a student by function matching, or any model with labels.

    python -m big_distill.train --config=configs/flowers_r50.py:variant=fast \
        --workdir=/tmp/flowers [--config.lr=0.001 ...]

Distillation when `config.teachers` names teachers; supervised training (or
fine-tuning, e.g. of a BiT-M teacher) when it is empty. Rerunning the same
command resumes from the workdir. Read top to bottom: set-up and checks, mesh,
input, models, optimizer, the update step, checkpoint, evaluators, loop.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging as std_logging
import os
import signal
import sys
import threading
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections as mlc
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

from big_distill import checkpoint as ckpt_lib
from big_distill import config_lib
from big_distill import distill
from big_distill import errors
from big_distill import evaluate
from big_distill import metrics as metrics_lib
from big_distill import optim
from big_distill import parallel
from big_distill import workdir as workdir_lib
from big_distill.data import input as input_lib
from big_distill.data import pp as pp_lib

gfile = tf.io.gfile

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/flowers_r50.py:variant=fast.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and logs go.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, for multi-process runs "
                                   "outside TPU pods / SLURM (auto-detected there).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


class ConfigError(ValueError):
  """A config that cannot run; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Models:
  """The student and teachers, built from the config."""
  student: Any
  teachers: dict[str, Any]
  res: dict[str, int]


def model_module(name: str):
  """`big_distill.models.<name>`: its Model, load() and save()."""
  try:
    return importlib.import_module(f"big_distill.models.{name}")
  except ModuleNotFoundError:
    raise ConfigError(f"Unknown model module {name!r}: there is no "
                      f"big_distill/models/{name}.py. Use e.g. 'bit'.") from None


def get_model(name: str, kwargs: mlc.ConfigDict, num_classes: int, dtype) -> Any:
  module = model_module(name)
  try:
    return module.Model(num_classes=num_classes, dtype=dtype, **kwargs.to_dict())
  except TypeError as e:
    raise ConfigError(f"Model {name!r} does not take these arguments: {e}") from None


def build_models(config: mlc.ConfigDict) -> Models:
  dtype = jnp.dtype(config.compute_dtype)
  missing = [f"{t}{s}" for t in config.teachers
             for s in ("", "_name", "_init", "_res") if f"{t}{s}" not in config]
  if missing:
    raise ConfigError(
        f"config.teachers={tuple(config.teachers)} but the config has no field(s) "
        f"{missing}. Each teacher NAME needs NAME_name, NAME (model kwargs), "
        "NAME_init (checkpoint) and NAME_res (input resolution) in the config file.")
  student = get_model(config.student_name, config.student, config.num_classes, dtype)
  teachers = {t: get_model(config[f"{t}_name"], config[t], config.num_classes, dtype)
              for t in config.teachers}
  res = {"student": config.student_res, **{t: config[f"{t}_res"] for t in config.teachers}}
  return Models(student, teachers, res)


def resolve_init(path: str) -> str:
  """A BiT .npz, or a workdir of a previous run (its exported student.npz)."""
  if gfile.isdir(path):
    exported = os.path.join(path, "student.npz")
    if not gfile.exists(exported):
      raise FileNotFoundError(
          f"{path} is a directory without student.npz: that run has not finished "
          "(student.npz is written at the end of training). Give its .npz or let it finish.")
    return exported
  return path


def check_config(config: mlc.ConfigDict) -> None:
  """Every check that needs no compile and no data loading."""
  if config.distill.views not in input_lib.VIEWS:
    raise ConfigError(f"config.distill.views={config.distill.views!r}: must be one of "
                      f"{input_lib.VIEWS}.")
  distill.from_config(config.distill)
  if config.optim.name not in optim.DIRECTIONS:
    raise ConfigError(f"config.optim.name={config.optim.name!r}: must be one of "
                      f"{optim.DIRECTIONS}.")
  if config.mixup.p is not None and config.mixup.p < 0:
    raise ConfigError(f"config.mixup.p={config.mixup.p} must be >= 0 (0 disables mixup).")
  for field in ("pp", "pp_random", "pp_fixed", "pp_post"):
    pp_lib.parse(config.input[field])
  for name, ec in config.evals.items():
    if ec.type not in evaluate.TYPES:
      raise ConfigError(f"config.evals.{name}.type={ec.type!r}: must be one of {evaluate.TYPES}.")
    pp_lib.parse(ec.pp)


def check_num_classes(config: mlc.ConfigDict) -> None:
  """config.num_classes against the labels of the training and labelled eval data."""
  datas = [("config.input.data", config.input.data)] + [
      (f"config.evals.{n}.data", ec.data) for n, ec in config.evals.items()
      if ec.type in ("classification", "calibration")]
  for where, data in datas:
    n = input_lib.num_classes(data)
    if n is not None and n != config.num_classes:
      raise ConfigError(
          f"config.num_classes={config.num_classes}, but {where} ({data.name}) has {n} "
          f"classes. Set --config.num_classes={n}, and use teachers fine-tuned on "
          f"{data.name} (their heads must have {n} outputs).")


def check_workdir(workdir: str, config: mlc.ConfigDict) -> None:
  """Refuses unwritable workdirs and workdirs of another config. Writes nothing."""
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
    path = os.path.join(workdir, "config.json")
    with gfile.GFile(path + ".tmp", "w") as f:
      json.dump(json.loads(config.to_json_best_effort()), f, indent=2, sort_keys=True)
    gfile.rename(path + ".tmp", path, overwrite=True)


def make_predict(models: Models) -> Callable:
  """`predict(student_params, teacher_params, images, which) -> {name: logits}`."""
  def predict(student_params, teacher_params, images, which):
    out = {}
    for name in which:
      if name == "student":
        out[name] = models.student.apply({"params": student_params}, images[name])[0]
      else:
        out[name] = models.teachers[name].apply({"params": teacher_params[name]}, images[name])[0]
    return out
  return predict


def make_update_fn(config: mlc.ConfigDict, models: Models, tx, schedule) -> Callable:
  """The jitted body: teachers' forward, student's forward+backward, update."""
  loss_fn = distill.from_config(config.distill)
  teachers = tuple(config.teachers)
  label_weight = config.distill.label_weight if teachers else 1.0
  p = config.mixup.p
  student_apply = models.student.apply
  if config.remat_student:
    student_apply = jax.checkpoint(student_apply)

  def update(state, teacher_params, batch):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    images = batch["image"]
    labels = None
    if "label" in batch:
      labels = jax.nn.one_hot(batch["label"], config.num_classes, dtype=jnp.float32)
    # One coefficient and one partner for every model: the same mixed image.
    if labels is None:
      images, _ = distill.mixup(rng, p, images)
    else:
      images, labels, _ = distill.mixup(rng, p, images, labels)
    teacher_logits = {
        t: jax.lax.stop_gradient(models.teachers[t].apply(
            {"params": teacher_params[t]}, images[t])[0]) for t in teachers}

    def loss(params):
      logits = student_apply({"params": params}, images["student"], train=True)[0]
      terms = {f"train/{t}_loss": loss_fn(logits, teacher_logits[t]).mean() for t in teachers}
      total = sum(terms.values(), jnp.zeros([], jnp.float32))
      if labels is not None:
        label_loss = distill.softmax_xent(logits, labels).mean()
        terms["train/label_loss"] = label_loss
        if label_weight:
          total = total + label_weight * label_loss
      return total, (logits, terms)

    (total, (logits, terms)), grads = jax.value_and_grad(loss, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = jax.tree.map(jnp.add, state["params"], updates)
    metrics = {
        "train/loss": total, **terms,
        "train/student_entropy": distill.entropy(logits).mean(),
        "train/grad_norm": optim.norms(grads),
        "train/param_norm": optim.norms(params),
        "train/update_norm": optim.norms(updates),
        "train/lr": config.lr * schedule(step),
    }
    for t in teachers:
      metrics[f"train/{t}_entropy"] = distill.entropy(teacher_logits[t]).mean()
    return {"params": params, "opt": opt, "step": step + 1}, metrics

  return update


def make_train_step(config: mlc.ConfigDict, models: Models, tx, schedule, mesh,
                    state_sharding) -> Callable:
  """The jitted, donated update with explicit shardings (also what benchmark.py times).

  State in `state_sharding`, the batch split over the mesh's batch axes,
  teachers in whatever sharding they were put in, metrics replicated.
  """
  return jax.jit(make_update_fn(config, models, tx, schedule),
                 in_shardings=(state_sharding, None, parallel.batch_sharding(mesh)),
                 out_shardings=(state_sharding, parallel.replicated(mesh)),
                 donate_argnums=0)


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


def train(config: mlc.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs (or resumes) the training of `config` in `workdir`; returns the last metrics."""
  # ---- Set-up and the checks that cost nothing --------------------------
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)  # orbax wants absolute paths.
  check_config(config)
  models = build_models(config)
  input_lib.check_prepared(config.input.data)
  for ec in config.evals.values():
    input_lib.check_prepared(ec.data)
  for t in config.teachers:
    if not config[f"{t}_init"]:
      raise ConfigError(f"Teacher {t!r} has no checkpoint: set config.{t}_init to a BiT "
                        ".npz or the workdir of a finished run.")
    path = resolve_init(config[f"{t}_init"])
    if not gfile.exists(path):
      raise ConfigError(
          f"Teacher {t!r}: checkpoint {path} does not exist. Fine-tune the teacher "
          "first (configs/teachers/, see the config's docstring) or set "
          f"config.{t}_init to its student.npz, its workdir, or a gs:// path.")
  if config.student_init and not gfile.exists(resolve_init(config.student_init)):
    raise ConfigError(f"config.student_init: {config.student_init} does not exist.")
  check_num_classes(config)
  check_workdir(workdir, config)

  # ---- Mesh -------------------------------------------------------------
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_size(config.input.batch_size, mesh)
  for name, ec in config.evals.items():
    parallel.check_batch_size(ec.batch_size or config.input.batch_size, mesh,
                              f"config.evals.{name}.batch_size")
  batch_sharding = parallel.batch_sharding(mesh)
  logging.info("mesh %s over %d devices (%d processes).", dict(mesh.shape),
               jax.device_count(), jax.process_count())

  # ---- Durations --------------------------------------------------------
  batch_size = config.input.batch_size
  n_train = input_lib.num_examples(config.input.data)
  steps_per_epoch = n_train / batch_size
  dur = functools.partial(config_lib.steps, num_examples=n_train, batch_size=batch_size)
  total_steps = dur("total", config)
  if not total_steps:
    raise ConfigError("Set the training length: config.total_steps, total_epochs or total_examples.")
  dur = functools.partial(dur, total_steps=total_steps)
  warmup_steps = dur("warmup", config.schedule, default=0)
  log_steps = dur("log_training", config, default=max(total_steps // 100, 1))
  ckpt_steps = dur("ckpt", config, default=total_steps)
  eval_steps = {name: evaluate.period(config, name, num_examples=n_train,
                                      batch_size=batch_size, total_steps=total_steps)
                for name in config.evals}

  # ---- Models and optimizer (abstract: nothing allocated yet) -----------
  rng = jax.random.key(config.seed)

  def init_params(model, res, key):
    return model.init(key, jnp.zeros((1, res, res, 3), jnp.float32))["params"]

  student_shape = jax.eval_shape(
      functools.partial(init_params, models.student, models.res["student"]), rng)
  tx, schedule = optim.make(config, student_shape, total_steps=total_steps,
                            warmup_steps=warmup_steps)
  state_shape = jax.eval_shape(lambda p: {"params": p, "opt": tx.init(p),
                                          "step": jnp.zeros([], jnp.int32)}, student_shape)
  state_sharding = parallel.param_shardings(mesh, state_shape, config.fsdp_min_size)
  sharded = [s for s in jax.tree.leaves(state_sharding["params"]) if s.spec != jax.sharding.PartitionSpec()]
  logging.info("Student: %d of %d parameter arrays sharded over fsdp.", len(sharded),
               len(jax.tree.leaves(state_sharding["params"])))

  # Teachers: loaded and checked against their configs before any compile.
  teacher_params = {}
  for i, (t, model) in enumerate(models.teachers.items()):
    shape = jax.eval_shape(functools.partial(init_params, model, models.res[t]),
                           jax.random.fold_in(rng, i + 1))
    host = model_module(config[f"{t}_name"]).load(
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shape), resolve_init(config[f"{t}_init"]))
    heads = host["head"]["kernel"]
    if not np.any(heads):
      raise ConfigError(
          f"Teacher {t!r} ({config[f'{t}_init']}) has a head with a different number "
          f"of classes than config.num_classes={config.num_classes}. A teacher must be "
          "fine-tuned on this data set first (configs/teachers/).")
    sharding = parallel.param_shardings(mesh, shape, config.fsdp_min_size)
    # Cast once to the compute dtype, not in every step.
    teacher_params[t] = jax.tree.map(
        lambda x, s: jax.device_put(x.astype(config.compute_dtype), s), host, sharding)

  # The student's initial weights, checked against the student's config now.
  student_init = None
  if config.student_init:
    student_init = model_module(config.student_name).load(
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), student_shape),
        resolve_init(config.student_init))
  # Every check passed: from here on the workdir is this config's.
  lock = workdir_lib.acquire(workdir)  # Or WorkdirError: another run holds it.
  record_config(workdir, config)

  # ---- The update step --------------------------------------------------
  train_step = make_train_step(config, models, tx, schedule, mesh, state_sharding)

  # ---- Initial state, or the checkpoint ---------------------------------
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_ckpts)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          state_shape, state_sharding)
  restored = ckpt.restore(abstract)
  if restored is not None:
    first_step, state = restored
    logging.info("Resumed from the checkpoint at step %d.", first_step)
  else:
    first_step = 0

    def init_state(key):
      params = init_params(models.student, models.res["student"], key)
      return {"params": params, "opt": tx.init(params), "step": jnp.zeros([], jnp.int32)}

    state = jax.jit(init_state, out_shardings=state_sharding)(rng)
    if student_init is not None:
      params = jax.tree.map(jax.device_put, student_init, state_sharding["params"])
      state = {**state, "params": params}
      state["opt"] = jax.jit(tx.init, out_shardings=state_sharding["opt"])(params)

  # ---- Evaluators -------------------------------------------------------
  predict = make_predict(models)
  evaluators = [evaluate.Evaluator(name, config, predict=predict, teachers=config.teachers,
                                   mesh=mesh, batch_sharding=batch_sharding)
                for name in config.evals]

  # ---- Train loop -------------------------------------------------------
  writer = metrics_lib.Writer(workdir, resume_step=first_step)
  progress = metrics_lib.Progress(total_steps, batch_size, steps_per_epoch, first_step)
  preemption = _Preemption()
  ds = input_lib.make_train_dataset(config, start_step=first_step)
  batches = input_lib.to_global(ds, batch_sharding, config.input.prefetch)
  last: dict[str, float] = writer.logged()  # For the NaN message, also after a resume.
  pending = None  # (step, metrics on device): fetched one step late.

  def flush(pending):
    # One step late: the next step is already queued on the device, so
    # waiting for this one's loss does not leave the accelerator idle.
    step, m = pending
    loss = float(jax.device_get(m["train/loss"]))
    if not np.isfinite(loss):
      raise NonFiniteLossError(
          f"Non-finite training loss {loss} at step {step}. Last logged metrics: "
          f"{json.dumps(last, sort_keys=True)}. The last good checkpoint is kept; "
          "lower config.lr or check the data, then rerun to resume.")
    if step % log_steps == 0 or step == total_steps:
      out = {k: float(v) for k, v in jax.device_get(m).items()}
      out.update(progress.measure(step))
      writer.write(step, out)
      last.update(out)

  profiling = False
  step = first_step
  try:
    for step in range(first_step + 1, total_steps + 1):
      if step == config.profile.first_step and jax.process_index() == 0:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
        profiling = True
      state, m = train_step(state, teacher_params, next(batches))
      if pending is not None:
        flush(pending)
      pending = (step, m)
      if profiling and step >= config.profile.first_step + config.profile.num_steps:
        jax.profiler.stop_trace()
        profiling = False
      evals_now = [e for e in evaluators if step % eval_steps[e.name] == 0 or step == total_steps]
      save_now = step % ckpt_steps == 0 or step == total_steps or preemption.requested
      if evals_now or save_now:
        flush(pending)  # Before saving: never checkpoint a non-finite state.
        pending = None
      if save_now:
        ckpt.save(step, state)
      if evals_now:
        results = {}
        for e in evals_now:
          results.update(e.run(state["params"], teacher_params))
        results["progress/epoch"] = step / steps_per_epoch
        writer.write(step, results)
        last.update(results)
      if preemption.requested:
        break  # Reported by main() as `Preempted`, after the save completes.
    if pending is not None:
      flush(pending)
  finally:
    if profiling:
      jax.profiler.stop_trace()
    ckpt.close()
    writer.close()
    lock.release()

  if preemption.requested:
    raise Preempted(step)
  if step == total_steps:
    params = parallel.to_host(state["params"], mesh)  # Collective: every process.
    if jax.process_index() == 0:
      path = os.path.join(workdir, "student.npz")
      model_module(config.student_name).save(params, path)
      logging.info("Wrote %s.", path)
  return last


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of orbax and TFDS (every save logs ~30 lines)."""

  def filter(self, record):
    noisy = ("/orbax/", "/tensorflow_datasets/")
    return record.levelno > std_logging.INFO or not any(n in record.pathname for n in noisy)


def main(argv):
  del argv
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("Give --config=configs/X.py[:args] and --workdir=DIR.")
  try:
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if jax.process_index() != 0:
      logging.set_verbosity(logging.WARNING)
    train(_CONFIG.value, _WORKDIR.value)
    parallel.finished()
  except Preempted as e:
    logging.warning("%s", e)
    sys.exit(PREEMPTED_EXIT_CODE)
  except ckpt_lib.DiskFullError as e:
    logging.error("%s", e)
    print(f"big_distill.train: error: {e}", file=sys.stderr)
    sys.exit(ckpt_lib.DISK_FULL_EXIT_CODE)
  except (ConfigError, input_lib.DataNotPreparedError, FileNotFoundError, errors.UserError,
          ValueError, NonFiniteLossError, ckpt_lib.CheckpointError) as e:
    logging.error("%s", e)
    print(f"big_distill.train: error: {e}", file=sys.stderr)
    sys.exit(2 if not isinstance(e, NonFiniteLossError) else 3)


def _innermost_message(e: BaseException) -> str:
  """ml_collections wraps a KeyError's text in an AttributeError; unwrap it."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
  return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config_flags' override errors as one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"big_distill.train: error: {e}\nPass --helpfull to see the flags.", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = " ".join(a for a in argv[1:] if a.startswith("--config.")) or "--config"
    what = ("unknown config field" if isinstance(e, (AttributeError, KeyError))
            else "value of the wrong type for a config field")
    print(f"big_distill.train: error: {what} in {overrides}: {_innermost_message(e)} "
          "Fields and their types are in big_distill/config_lib.py (base()) and in the "
          "config file.", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
