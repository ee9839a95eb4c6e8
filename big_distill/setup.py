"""The one set-up of every entry point: from a config to models, state, teachers and step.

`train`, `benchmark`, `precision` and `evaluate` all build what they run
through these functions, so what is timed, checked or evaluated is what
trains:

    check_config(config)                      # no data, no weights, no compile
    models = build_models(config)
    check_inits(config)                       # teacher/student files exist
    d = durations(config)                     # steps, from steps/epochs/examples
    mesh = make_mesh(config)
    s = build(config, models, mesh, total_steps=d.total, warmup_steps=d.warmup)
    teacher_params = load_teachers(config, models, mesh)
    state = s.init_state(jax.random.key(config.seed))
    state, metrics = s.train_step(state, teacher_params, batch)

The step is the paper's function matching: every teacher and the student see
the same (mixed) image; the loss is the distillation loss against each
teacher, summed (with `config.distill.label_weight` times the labelled
cross-entropy, which supervised runs use alone). `make_loss` is that loss, and
`benchmark` counts its FLOPs from the very same function.

Mistakes in the config or its files raise `errors.UserError`s, once, where
they are found; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import itertools
import math
import os
from typing import Any, Callable, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import tensorflow as tf

from big_distill import config_lib
from big_distill import distill
from big_distill import errors
from big_distill import evaluate
from big_distill import optim
from big_distill import parallel
from big_distill.data import device as device_data
from big_distill import precompute
from big_distill.data import input as input_lib
from big_distill.data import pp as pp_lib

gfile = tf.io.gfile


@contextlib.contextmanager
def config_errors(where: str = "") -> Iterator[None]:
  """Reports the ValueErrors of a validating call as one ConfigError.

  parallel, optim and pp validate the config fields they read and say what is
  wrong with a ValueError; around those calls (and only those: elsewhere a
  ValueError is a bug), it is the user's mistake, reported as one line.
  """
  try:
    yield
  except errors.UserError:
    raise
  except ValueError as e:
    raise errors.ConfigError(f"{where}{e}") from e


# ---- Models ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Models:
  """The student and teachers, built from the config."""
  student: Any
  teachers: dict[str, Any]
  res: dict[str, int]
  # Names ("student", teachers) of the models with a `batch_stats` collection
  # (BatchNorm): their weights are `{"params", "batch_stats"}` dicts, not a
  # bare params tree. See "Batch statistics" below.
  with_stats: frozenset[str] = frozenset()


def model_module(name: str):
  """`big_distill.models.<name>`: its Model, load() and save()."""
  try:
    return importlib.import_module(f"big_distill.models.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"big_distill.models.{name}":
      raise  # The module exists but one of its imports does not: a bug.
    raise errors.ConfigError(f"Unknown model module {name!r}: there is no "
                             f"big_distill/models/{name}.py. Use e.g. 'bit'.") from None


def get_model(name: str, kwargs: mlc.ConfigDict, num_classes: int, dtype) -> Any:
  module = model_module(name)
  try:
    return module.Model(num_classes=num_classes, dtype=dtype, **kwargs.to_dict())
  except TypeError as e:
    raise errors.ConfigError(f"Model {name!r} does not take these arguments: {e}") from None


def build_models(config: mlc.ConfigDict) -> Models:
  dtype = jnp.dtype(config.compute_dtype)
  missing = [f"{t}{s}" for t in config.teachers
             for s in ("", "_name", "_init", "_res") if f"{t}{s}" not in config]
  if missing:
    raise errors.ConfigError(
        f"config.teachers={tuple(config.teachers)} but the config has no field(s) "
        f"{missing}. Each teacher NAME needs NAME_name, NAME (model kwargs), "
        "NAME_init (checkpoint) and NAME_res (input resolution) in the config file.")
  student = get_model(config.student_name, config.student, config.num_classes, dtype)
  teachers = {t: _frozen(config[f"{t}_name"], get_model(config[f"{t}_name"], config[t],
                                                        config.num_classes, dtype))
              for t in config.teachers}
  res = {"student": config.student_res, **{t: config[f"{t}_res"] for t in config.teachers}}
  all_models = {"student": student, **teachers}
  with_stats = frozenset(n for n, m in all_models.items() if has_batch_stats(m, res[n]))
  return Models(student, teachers, res, with_stats)


def init_variables(model, res: int, key) -> dict[str, Any]:
  return dict(model.init(key, jnp.zeros((1, res, res, 3), jnp.float32)))


def _frozen(module_name: str, model) -> Any:
  """A teacher as it runs: never trained, so its module may precompute what only
  depends on its weights (BiT: the weight standardization, once at load
  instead of every step; `freeze(model, params)` / `freeze_params(params)`)."""
  module = model_module(module_name)
  return module.freeze(model, None)[0] if hasattr(module, "freeze") else model


def init_params(model, res: int, key) -> Any:
  return init_variables(model, res, key)["params"]


def variable_shapes(model, res: int) -> dict[str, Any]:
  """Every collection of the model's variables, as ShapeDtypeStructs (no compile)."""
  return jax.eval_shape(functools.partial(init_variables, model, res), jax.random.key(0))


def has_batch_stats(model, res: int) -> bool:
  return "batch_stats" in variable_shapes(model, res)


def param_shapes(model, res: int) -> Any:
  """The model's parameters as ShapeDtypeStructs (nothing allocated or compiled)."""
  return jax.eval_shape(functools.partial(init_params, model, res), jax.random.key(0))


# ---- Checks that cost nothing ------------------------------------------------


def check_config(config: mlc.ConfigDict) -> None:
  """Every check that needs no data, no weights and no compile."""
  input_lib.check_views(config.distill.views)
  distill.from_config(config.distill)
  precompute.check_config(config)
  if config.mixup.p is not None and config.mixup.p < 0:
    raise errors.ConfigError(f"config.mixup.p={config.mixup.p} must be >= 0 (0 disables mixup).")
  for field in ("pp", "pp_random", "pp_fixed", "pp_post"):
    with config_errors(f"config.input.{field}: "):
      pp_lib.parse(config.input[field])
  for name in config.evals:
    evaluate.check_eval(config, name)


def _labelled_evals(config: mlc.ConfigDict) -> list[tuple[str, Any]]:
  return [(f"config.evals.{n}.data", ec.data) for n, ec in config.evals.items()
          if ec.type in ("classification", "calibration")]


def training_labels_are_the_tasks(config: mlc.ConfigDict) -> bool:
  """Whether the training images are the task's own data, with its labels.

  The task is what the labelled evaluators read. A config that distils on
  another data set's images (paper Section 3.8: a Pets teacher on Food101
  images) says so by its data names alone: `config.input.data.name` is none
  of its labelled evaluators' data. Those images' labels (if any) mean
  nothing for the task, so the step neither mixes nor logs them, and no
  class count is compared. A config without labelled evaluators trains on
  its task's data.
  """
  names = {d.name for _, d in _labelled_evals(config)}
  return not names or config.input.data.name in names


def check_num_classes(config: mlc.ConfigDict) -> None:
  """config.num_classes against the labels of the training and labelled eval data.

  The training data's labels are checked only when they are the task's
  (`training_labels_are_the_tasks`); otherwise one log line says they are
  ignored. A run without teachers (supervised) needs the task's labels.
  """
  datas = _labelled_evals(config)
  if training_labels_are_the_tasks(config):
    datas = [("config.input.data", config.input.data)] + datas
  elif not config.teachers:
    raise errors.ConfigError(
        f"config.input.data is {config.input.data.name}, but the labelled evals read "
        f"{sorted({d.name for _, d in datas})}: a run without teachers learns from the "
        "training data's labels, which must be the task's. Train on the task's data, "
        "or add teachers (config.teachers) to distil on another data set's images.")
  else:
    logging.info("Distilling on the images of %s, another data set than the task's (%s): "
                 "the labels of the training data are ignored (no label loss, no "
                 "supervised metrics on the training stream).", config.input.data.name,
                 ", ".join(sorted({d.name for _, d in datas})))
  for where, data in datas:
    n = input_lib.num_classes(data)
    if n is not None and n != config.num_classes:
      raise errors.ConfigError(
          f"config.num_classes={config.num_classes}, but {where} ({data.name}) has {n} "
          f"classes. Set --config.num_classes={n}, and use teachers fine-tuned on "
          f"{data.name} (their heads must have {n} outputs).")


def check_data(config: mlc.ConfigDict) -> None:
  """The training and every eval data set are prepared, with the config's classes."""
  input_lib.check_prepared(config.input.data)
  for ec in config.evals.values():
    input_lib.check_prepared(ec.data)
  check_num_classes(config)


def resolve_init(path: str) -> str:
  """A BiT .npz, or a workdir of a finished run (its exported student.npz)."""
  if gfile.isdir(path):
    exported = os.path.join(path, "student.npz")
    if not gfile.exists(exported):
      raise errors.CheckpointError(
          f"{path} is a directory without student.npz: that run has not finished "
          "(student.npz is written at the end of training). Give its .npz or let it finish.")
    return exported
  return path


def readable(path: str, field: str) -> bool:
  """Whether `path` exists; a remote path that cannot be reached is an error.

  Remote files (gs://bit_models/distill/... of the paper's release) are read
  through tf.io.gfile; without network or credentials gfile fails within
  seconds, and the message says how to use a local copy instead.
  """
  try:
    return gfile.exists(path)
  except tf.errors.OpError as e:
    if "://" not in path:
      raise
    reason = str(e).strip().splitlines()[0]
    raise errors.CheckpointError(
        f"config.{field}={path} cannot be read ({reason}). Copy it to this "
        f"machine, e.g. `gsutil cp {path} DIR/` (or download "
        f"{path.replace('gs://', 'https://storage.googleapis.com/', 1)}), then pass "
        f"--config.{field}=DIR/{os.path.basename(path)}.") from None


def check_inits(config: mlc.ConfigDict, student: bool = True) -> None:
  """The teachers' (and, with `student`, the student's initial) checkpoints exist."""
  for t in config.teachers:
    path = config[f"{t}_init"]
    if not path:
      raise errors.ConfigError(f"Teacher {t!r} has no checkpoint: set config.{t}_init to a "
                               "BiT .npz or the workdir of a finished run.")
    if not readable(path, f"{t}_init"):
      raise errors.ConfigError(
          f"Teacher {t!r}: checkpoint {path} does not exist. Fine-tune the teacher "
          "first (configs/teachers/, see the config's docstring) or set "
          f"config.{t}_init to its student.npz, its workdir, or a gs:// path.")
    resolve_init(path)  # A workdir must hold its student.npz.
  if student and config.student_init:
    if not readable(config.student_init, "student_init"):
      raise errors.ConfigError(f"config.student_init: {config.student_init} does not exist.")
    resolve_init(config.student_init)


# ---- Durations and mesh ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Durations:
  """Every period of a run, in steps."""
  total: int
  warmup: int
  log: int
  ckpt: int
  evals: dict[str, int]
  steps_per_epoch: float


def durations(config: mlc.ConfigDict) -> Durations:
  """The config's durations (given in steps, epochs or examples) in steps."""
  batch_size = config.input.batch_size
  n_train = input_lib.num_examples(config.input.data)
  dur = functools.partial(config_lib.steps, num_examples=n_train, batch_size=batch_size)
  total = dur("total", config)
  if not total:
    raise errors.ConfigError(
        "Set the training length: config.total_steps, total_epochs or total_examples.")
  dur = functools.partial(dur, total_steps=total)
  return Durations(
      total=total,
      warmup=dur("warmup", config.schedule, default=0),
      log=dur("log_training", config, default=max(total // 100, 1)),
      ckpt=dur("ckpt", config, default=total),
      evals={name: evaluate.period(config, name, num_examples=n_train, batch_size=batch_size,
                                   total_steps=total) for name in config.evals},
      steps_per_epoch=n_train / batch_size)


def make_mesh(config: mlc.ConfigDict, batch_size: int | None = None) -> jax.sharding.Mesh:
  """The mesh of `config.mesh`, checked against the training and eval batch sizes."""
  with config_errors():
    mesh = parallel.make_mesh(config.mesh)
    parallel.check_batch_size(batch_size or config.input.batch_size, mesh)
    for name, ec in config.evals.items():
      parallel.check_batch_size(ec.batch_size or config.input.batch_size, mesh,
                                f"config.evals.{name}.batch_size")
  return mesh


# ---- Batch statistics --------------------------------------------------------
#
# A model with BatchNorm (e.g. mobilenet_v3 with norm="batch") has a second
# collection, `batch_stats`: running averages that the training forward pass
# updates and inference reads. Its "weights" are then the variables dict
# `{"params": ..., "batch_stats": ...}` (what its module's save/load take);
# a model without (BiT) keeps its bare params tree, so the train state,
# checkpoints and files of those runs stay as they were. The student's stats
# live in the train state beside its params (`state["batch_stats"]`, sharded
# like them, outside the optimizer and the gradients); teachers and every
# evaluation run in inference mode (train=False): the running averages.


def as_variables(models: Models, name: str, weights) -> dict[str, Any]:
  """A model's weights (params tree, or variables dict with stats) as flax variables."""
  return weights if name in models.with_stats else {"params": weights}


def student_weights(state) -> Any:
  """What predict/export take for the student: its params, plus its stats if any."""
  if "batch_stats" in state:
    return {"params": state["params"], "batch_stats": state["batch_stats"]}
  return state["params"]


def weight_shapes(models: Models, name: str) -> Any:
  """`name`'s weights (see as_variables) as ShapeDtypeStructs."""
  model = models.student if name == "student" else models.teachers[name]
  shapes = variable_shapes(model, models.res[name])
  if name in models.with_stats:
    return {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}
  return shapes["params"]


# ---- The update step ---------------------------------------------------------


def make_predict(models: Models) -> Callable:
  """`predict(student, teacher_params, images, which) -> {name: logits}`.

  `student` is `student_weights(state)`: the params tree, or for a student
  with batch statistics the `{"params", "batch_stats"}` dict. Every model runs
  in inference mode (BatchNorm: the running averages).
  """
  def predict(student, teacher_params, images, which):
    out = {}
    for name in which:
      if name == "student":
        out[name] = models.student.apply(as_variables(models, name, student), images[name],
                                         train=False)[0]
      else:
        out[name] = models.teachers[name].apply(
            as_variables(models, name, teacher_params[name]), images[name], train=False)[0]
    return out
  return predict


def make_teacher_forward(models: Models) -> Callable:
  """`(teacher_params, images) -> {teacher: logits}`, frozen (no gradient), in
  inference mode (a teacher's batch statistics are its running averages)."""
  def teacher_forward(teacher_params, images):
    return {t: jax.lax.stop_gradient(
                m.apply(as_variables(models, t, teacher_params[t]), images[t], train=False)[0])
            for t, m in models.teachers.items()}
  return teacher_forward


def make_loss(config: mlc.ConfigDict, models: Models) -> Callable:
  """`loss(params, images, teacher_logits, labels[, batch_stats]) -> (total, aux)`.

  `aux` is `(logits, terms)`, and `(logits, terms, new_batch_stats)` when
  `batch_stats` (the student's, from the train state) are given: BatchNorm
  normalizes with this batch's statistics (under jit with a data-sharded
  batch: the global batch's) and returns the updated running averages.

  The student's forward and its loss: the distillation loss against every
  teacher, summed (for KL, distilling from the teachers' probability-space
  ensemble), plus `label_weight` times the labelled cross-entropy (weight 1 in
  supervised runs, which have no teachers). `labels` are one-hot (mixed like
  the images) or None.
  """
  loss_fn = distill.from_config(config.distill)
  teachers = tuple(config.teachers)
  label_weight = config.distill.label_weight if teachers else 1.0
  def forward(params, batch_stats, images_BHWC):
    """(logits, new batch_stats or None) of the training forward pass."""
    if batch_stats is None:
      return models.student.apply({"params": params}, images_BHWC, train=True)[0], None
    (logits, _), mutated = models.student.apply(
        {"params": params, "batch_stats": batch_stats}, images_BHWC, train=True,
        mutable=["batch_stats"])
    return logits, mutated["batch_stats"]
  if config.remat_student:
    forward = jax.checkpoint(forward)

  def loss(params, images, teacher_logits, labels, batch_stats=None):
    logits, new_stats = forward(params, batch_stats, images["student"])
    terms = {f"train/{t}_loss": loss_fn(logits, teacher_logits[t]).mean() for t in teachers}
    total = sum(terms.values(), jnp.zeros([], jnp.float32))
    if labels is not None:
      label_loss = distill.softmax_xent(logits, labels).mean()
      terms["train/label_loss"] = label_loss
      if label_weight:
        total = total + label_weight * label_loss
    if batch_stats is None:
      return total, (logits, terms)
    return total, (logits, terms, new_stats)
  return loss


def make_update_fn(config: mlc.ConfigDict, models: Models, tx, schedule) -> Callable:
  """The body of the step: mixup, teachers' forward, student's forward+backward, update.

  With `config.distill.fixed` the teachers' outputs were computed once
  (precompute.py) and come with the batch as `batch["teacher_logits"]`: the
  step has no teacher forward (and no mixup, which such targets cannot follow).
  """
  teacher_forward = make_teacher_forward(models)
  precomputed = bool(config.distill.fixed)
  loss = make_loss(config, models)
  p = config.mixup.p
  task_labels = training_labels_are_the_tasks(config)

  def update(state, teacher_params, batch):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    images = batch["image"]
    labels = None
    if "label" in batch and task_labels:
      labels = jax.nn.one_hot(batch["label"], config.num_classes, dtype=jnp.float32)
    # One coefficient and one partner for every model: the same mixed image.
    if labels is None:
      images, _ = distill.mixup(rng, p, images)
    else:
      images, labels, _ = distill.mixup(rng, p, images, labels)
    if precomputed:
      teacher_logits = batch["teacher_logits"]
    else:
      teacher_logits = teacher_forward(teacher_params, images)
    new = {}
    if "batch_stats" in state:
      (total, (logits, terms, new["batch_stats"])), grads = jax.value_and_grad(
          loss, has_aux=True)(state["params"], images, teacher_logits, labels,
                              state["batch_stats"])
    else:
      (total, (logits, terms)), grads = jax.value_and_grad(loss, has_aux=True)(
          state["params"], images, teacher_logits, labels)
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
    for t in teacher_logits:
      metrics[f"train/{t}_entropy"] = distill.entropy(teacher_logits[t]).mean()
    return {"params": params, "opt": opt, "step": step + 1, **new}, metrics

  return update


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """The jitted step and the abstract state it runs on (nothing allocated yet)."""
  config: mlc.ConfigDict
  models: Models
  mesh: jax.sharding.Mesh
  tx: Any
  schedule: Callable
  state: Any           # ShapeDtypeStructs with shardings: {"params", "opt", "step"}
                       # (+ "batch_stats" for a student with BatchNorm).
  # (state, teacher_params, batch) -> (state, metrics); donates state. With
  # config.input.cache="device" the third argument is the device data set.
  train_step: Callable
  init_state: Callable  # key -> state, sharded.

  @property
  def state_sharding(self) -> Any:
    return jax.tree.map(lambda s: s.sharding, self.state)


def build(config: mlc.ConfigDict, models: Models, mesh: jax.sharding.Mesh, *,
          total_steps: int, warmup_steps: int) -> TrainSetup:
  """Optimizer, abstract sharded state and the jitted, donated train step.

  State in its fsdp shardings, the batch split over the mesh's batch axes,
  teachers in whatever sharding they were put in, metrics replicated.
  """
  shapes = variable_shapes(models.student, models.res["student"])
  student_shape = shapes["params"]
  with_stats = "student" in models.with_stats
  with config_errors():
    tx, schedule = optim.make(config, student_shape, total_steps=total_steps,
                              warmup_steps=warmup_steps)

  def new_state(variables):
    params = variables["params"]
    state = {"params": params, "opt": tx.init(params), "step": jnp.zeros([], jnp.int32)}
    if with_stats:  # Only then: BiT runs keep the state (and checkpoints) they had.
      state["batch_stats"] = variables["batch_stats"]
    return state
  state_shape = jax.eval_shape(new_state, shapes)
  state_sharding = parallel.param_shardings(mesh, state_shape, config.fsdp_min_size)
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       state_shape, state_sharding)

  def init_state(key):
    return new_state(init_variables(models.student, models.res["student"], key))

  update = make_update_fn(config, models, tx, schedule)
  batch_sharding = parallel.batch_sharding(mesh)
  if input_lib.cache_mode(config) == "device":
    # The batch is made inside the step from the device-resident data set
    # (replicated): no host work and no transfer per step.
    with config_errors():
      make_batch = device_data.batch_fn(config)

    def step_fn(state, teacher_params, data):
      batch = jax.lax.with_sharding_constraint(make_batch(data, state["step"]), batch_sharding)
      return update(state, teacher_params, batch)
    third = parallel.replicated(mesh)
  else:
    step_fn, third = update, batch_sharding
  train_step = jax.jit(step_fn, in_shardings=(state_sharding, None, third),
                       out_shardings=(state_sharding, parallel.replicated(mesh)),
                       donate_argnums=0)
  return TrainSetup(config=config, models=models, mesh=mesh, tx=tx, schedule=schedule,
                    state=state, train_step=train_step,
                    init_state=jax.jit(init_state, out_shardings=state_sharding))


def with_params(s: TrainSetup, state: Any, params: Any) -> Any:
  """`state` with the student's weights replaced (and a fresh optimizer state).

  `params`: the student's weights as `load_student_init` gives them (for a
  student with batch statistics, the variables dict: its stats replace the
  state's too).
  """
  if "batch_stats" in state:
    stats = jax.tree.map(jax.device_put, params["batch_stats"],
                         s.state_sharding["batch_stats"])
    state, params = {**state, "batch_stats": stats}, params["params"]
  params = jax.tree.map(jax.device_put, params, s.state_sharding["params"])
  return {**state, "params": params,
          "opt": jax.jit(s.tx.init, out_shardings=s.state_sharding["opt"])(params)}


def prepare_train_data(config: mlc.ConfigDict, mesh) -> Any:
  """What the training input holds in memory, made (and checked) before training.

  "decoded": the decoded set (host); "device": it on every device; else None
  (encoded caches and streams read their files when iterated). Called before
  anything is written to the workdir, so a set that does not fit, or a random
  op in `input.pp`, is refused first.
  """
  mode = input_lib.cache_mode(config)
  if mode not in ("decoded", "device"):
    return None
  decoded = input_lib.decode_training_set(config)
  return device_data.put(decoded, config, mesh) if mode == "device" else decoded


def train_batches(config: mlc.ConfigDict, mesh, start_step: int, data: Any = None,
                  tables: Any = None) -> Iterator[Any]:
  """What `train_step` takes third, step after step, from `start_step` on.

  Host pipelines: global batches, `config.input.prefetch` ahead, with the
  fixed teachers' precomputed outputs (`tables`) looked up by example id. The
  device cache: the device-resident data set, the same every step (the step
  draws its batch from it by (seed, step)). `data`: from `prepare_train_data`.
  """
  if input_lib.cache_mode(config) == "device":
    return itertools.repeat(data if data is not None else prepare_train_data(config, mesh))
  batches = input_lib.make_train_dataset(config, start_step=start_step,
                                         decoded=data).as_numpy_iterator()
  if tables is not None:
    batches = precompute.with_targets(batches, tables)
  return input_lib.to_global(batches, parallel.batch_sharding(mesh), config.input.prefetch)


# ---- Weights -----------------------------------------------------------------


def load_weights(config: mlc.ConfigDict, name: str, model, path: str, *, template=None,
                 where: str | None = None, **kwargs) -> Any:
  """`config.<name>_name`'s load() of `path` into `model`'s shapes, as numpy.

  `template`: the parameters load() fills in (default: zeros of the model's
  shapes). The model module reports a file that does not fit the model with a
  ValueError naming the arrays; that is the config's mistake (its depth,
  width or num_classes, or the path), reported once, prefixed by `where`
  (default: the config field of the path).
  """
  module = model_module(config[f"{name}_name"])
  if template is None:
    shapes = variable_shapes(model, config[f"{name}_res"])
    if "batch_stats" not in shapes:
      shapes = shapes["params"]  # A bare params tree, as bit.load takes.
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  with config_errors(where if where is not None else f"config.{name}_init={path}: "):
    return module.load(template, resolve_init(path), **kwargs)


def load_trained(config: mlc.ConfigDict, name: str, model, path: str,
                 where: str | None = None) -> Any:
  """Trained weights (a teacher, or a model to evaluate): the head must fit.

  Contract: a model module whose load() takes `head_mismatch` raises for a
  head of another class count with head_mismatch="error". Older ones replace
  such a head by zeros (as fine-tuning from BiT-M wants), so an all-zero
  kernel is read as that replacement: no trained model has one.
  """
  module = model_module(config[f"{name}_name"])
  takes = inspect.signature(module.load).parameters
  if "head_mismatch" in takes:
    # stem_pool_pad: bit.load warns when a big_vision file meets a "zeros" model.
    extra = ({"stem_pool_pad": model.stem_pool_pad}
             if "stem_pool_pad" in takes and hasattr(model, "stem_pool_pad") else {})
    return load_weights(config, name, model, path, where=where, head_mismatch="error", **extra)
  host = load_weights(config, name, model, path, where=where)
  if not np.any(host.get("params", host)["head"]["kernel"]):
    if name == "student":
      what, fix = "The model", ("Evaluate it with the config of the data set it was "
                                "trained on.")
    else:
      what, fix = f"Teacher {name!r}", ("A teacher must be fine-tuned on this data set "
                                        "first (configs/teachers/).")
    raise errors.ConfigError(
        f"{what} ({path}) has a head with a different number of classes than "
        f"config.num_classes={config.num_classes}. {fix}")
  return host


def frozen_params(config: mlc.ConfigDict, t: str, host: Any) -> Any:
  """Teacher `t`'s float32 weights as its frozen model (`_frozen`) takes them."""
  module = model_module(config[f"{t}_name"])
  return module.freeze_params(host) if hasattr(module, "freeze_params") else host


def put_teacher(config: mlc.ConfigDict, mesh, host: Any) -> Any:
  """Sharded over fsdp where large, and cast once to the compute dtype, not every step."""
  sharding = parallel.param_shardings(mesh, host, config.fsdp_min_size)
  return jax.tree.map(lambda x, s: jax.device_put(x.astype(config.compute_dtype), s),
                      host, sharding)


def load_teachers(config: mlc.ConfigDict, models: Models, mesh) -> dict[str, Any]:
  """The teachers' parameters: loaded, checked against their configs, sharded, cast."""
  return {t: put_teacher(config, mesh, frozen_params(
      config, t, load_trained(config, t, m, config[f"{t}_init"])))
          for t, m in models.teachers.items()}


def load_student_init(config: mlc.ConfigDict, models: Models) -> Any | None:
  """`config.student_init` as numpy parameters of the student (None: from scratch)."""
  if not config.student_init:
    return None
  return load_weights(config, "student", models.student, config.student_init)


def random_params(model, res: int, key, dtype=jnp.float32) -> Any:
  """Random parameters with a random head, in `dtype` (jit it).

  BiT's head starts at zero, which would make every output uniform: a random
  teacher must have a head, so that its targets (and FLOPs) are realistic.
  """
  variables = init_variables(model, res, key)
  params = variables["params"]
  kernel = params["head"]["kernel"]
  head = jax.random.normal(jax.random.fold_in(key, 1), kernel.shape) / math.sqrt(kernel.shape[0])
  params = {**params, "head": {**params["head"], "kernel": head}}
  if "batch_stats" in variables:  # The weights of a BatchNorm model: see as_variables.
    params = {"params": params, "batch_stats": variables["batch_stats"]}
  return jax.tree.map(lambda x: x.astype(dtype), params)




def make_evaluators(config: mlc.ConfigDict, models: Models, mesh) -> list[evaluate.Evaluator]:
  """One evaluator per entry of `config.evals`, on the models' predict function.

  Evaluators of one type share their jitted step (one compile per batch shape).
  """
  predict, steps = make_predict(models), {}
  return [evaluate.Evaluator(name, config, predict=predict, teachers=config.teachers,
                             mesh=mesh, batch_sharding=parallel.batch_sharding(mesh),
                             steps=steps)
          for name in config.evals]


def abstract_teachers(config: mlc.ConfigDict, models: Models, mesh) -> dict[str, Any]:
  """The teachers' parameters as `load_teachers` places them, as ShapeDtypeStructs."""
  shapes = {t: weight_shapes(models, t) for t in models.teachers}
  sharding = parallel.param_shardings(mesh, shapes, config.fsdp_min_size)
  dtype = jnp.dtype(config.compute_dtype)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype, sharding=sh),
                      shapes, sharding)


def random_teachers(config: mlc.ConfigDict, models: Models, mesh, key) -> dict[str, Any]:
  """Random teachers, sharded and cast as `load_teachers` puts real ones."""
  def init():
    return {t: random_params(m, models.res[t], jax.random.fold_in(key, i + 1),
                             jnp.dtype(config.compute_dtype))
            for i, (t, m) in enumerate(models.teachers.items())}
  sharding = jax.tree.map(lambda s: s.sharding, abstract_teachers(config, models, mesh))
  return jax.jit(init, out_shardings=sharding)()
