"""The train step: its loss, its update, the jitted step and the state it runs on.

`train`, `benchmark`, `precision` and `evaluate` build what they run through
the same modules, so what is timed, checked or evaluated is what trains:

    checks.check_config(config)               # no data, no weights, no compile
    models = model_set.build_models(config)
    checks.check_inits(config)                # teacher/student files exist
    d = plan.durations(config)                # steps, from steps/epochs/examples
    mesh = plan.make_mesh(config)
    s = setup.build(config, models, mesh, total_steps=d.total, warmup_steps=d.warmup)
    teacher_params = weights.load_teachers(config, models, mesh)
    state = s.init_state(jax.random.key(config.seed))
    state, metrics = s.train_step(state, teacher_params, batch)

The step is the paper's function matching: every teacher and the student see
the same (mixed) image; the loss is the distillation loss against each
teacher, summed (with `config.distill.label_weight` times the labelled
cross-entropy, which supervised runs use alone). `make_loss` is that loss, and
`benchmark` counts its FLOPs from the very same function.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections as mlc

from big_distill import distill
from big_distill import input_modes
from big_distill import optim
from big_distill import parallel
from big_distill.checks import config_errors, training_labels_are_the_tasks
from big_distill.model_set import Models, init_variables, variable_shapes


def student_weights(state) -> Any:
  """The student's variables in the train state: what predict, evaluators and export take."""
  return state["variables"]


# ---- Checkpoints -------------------------------------------------------------
#
# On disk, the state keeps the tree it always had: the student's collections
# beside the optimizer and the step (`{"params", "opt", "step"}`, plus
# `"batch_stats"` for a BatchNorm student), so that checkpoints written
# before the state held one variables dict resume as they are.


def to_checkpoint(state) -> dict[str, Any]:
  """The train state as its checkpoint stores it."""
  return {**state["variables"], "opt": state["opt"], "step": state["step"]}


def from_checkpoint(tree) -> dict[str, Any]:
  """The train state of a checkpoint's tree (`to_checkpoint`'s inverse)."""
  tree = dict(tree)
  opt, step = tree.pop("opt"), tree.pop("step")
  return {"variables": tree, "opt": opt, "step": step}


# ---- The step ----------------------------------------------------------------


def make_predict(models: Models) -> Callable:
  """`predict(student, teacher_variables, images, which) -> {name: logits}`.

  `student` is `student_weights(state)`, the student's variables. Every
  model runs in inference mode (BatchNorm: the running averages).
  """
  def predict(student, teacher_variables, images, which):
    out = {}
    for name in which:
      if name == "student":
        out[name] = models.student.apply(student, images[name], train=False)[0]
      else:
        out[name] = models.teachers[name].apply(teacher_variables[name], images[name],
                                                train=False)[0]
    return out
  return predict


def make_teacher_forward(models: Models) -> Callable:
  """`(teacher_variables, images) -> {teacher: logits}`, frozen (no gradient), in
  inference mode (a teacher's batch statistics are its running averages)."""
  def teacher_forward(teacher_variables, images):
    return {t: jax.lax.stop_gradient(m.apply(teacher_variables[t], images[t], train=False)[0])
            for t, m in models.teachers.items()}
  return teacher_forward


def make_loss(config: mlc.ConfigDict, models: Models) -> Callable:
  """`loss(params, others, images, teacher_logits, labels) -> (total, (logits, terms, others))`.

  `params` are the student's (what gets gradients), `others` its other
  collections (`batch_stats` for BatchNorm; `{}` for most models): the
  forward pass runs in training mode, and returns them updated (BatchNorm:
  normalized with this batch's statistics, under jit with a data-sharded
  batch the global batch's, and the running averages updated).

  The student's forward and its loss: the distillation loss against every
  teacher, summed (for KL, distilling from the teachers' probability-space
  ensemble), plus `label_weight` times the labelled cross-entropy (weight 1 in
  supervised runs, which have no teachers). `labels` are one-hot (mixed like
  the images) or None.
  """
  loss_fn = distill.from_config(config.distill)
  teachers = tuple(config.teachers)
  label_weight = config.distill.label_weight if teachers else 1.0

  def forward(params, others, images_BHWC):
    """(logits, updated other collections) of the training forward pass."""
    (logits, _), mutated = models.student.apply(
        {"params": params, **others}, images_BHWC, train=True, mutable=list(others))
    return logits, dict(mutated)
  if config.remat_student:
    forward = jax.checkpoint(forward)

  def loss(params, others, images, teacher_logits, labels):
    logits, new_others = forward(params, others, images["student"])
    terms = {f"train/{t}_loss": loss_fn(logits, teacher_logits[t]).mean() for t in teachers}
    total = sum(terms.values(), jnp.zeros([], jnp.float32))
    if labels is not None:
      label_loss = distill.softmax_xent(logits, labels).mean()
      terms["train/label_loss"] = label_loss
      if label_weight:
        total = total + label_weight * label_loss
    return total, (logits, terms, new_others)
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
    variables = state["variables"]
    others = {k: v for k, v in variables.items() if k != "params"}
    (total, (logits, terms, others)), grads = jax.value_and_grad(loss, has_aux=True)(
        variables["params"], others, images, teacher_logits, labels)
    updates, opt = tx.update(grads, state["opt"], variables["params"])
    params = jax.tree.map(jnp.add, variables["params"], updates)
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
    return {"variables": {**others, "params": params}, "opt": opt, "step": step + 1}, metrics

  return update


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """The jitted step and the abstract state it runs on (nothing allocated yet)."""
  config: mlc.ConfigDict
  models: Models
  mesh: jax.sharding.Mesh
  tx: Any
  schedule: Callable
  state: Any           # ShapeDtypeStructs with shardings: {"variables", "opt", "step"}.
  # (state, teacher_variables, batch) -> (state, metrics); donates state. With
  # config.input.cache="device" the third argument is the device data set.
  train_step: Callable
  init_state: Callable  # key -> state, sharded.

  @property
  def state_sharding(self) -> Any:
    return jax.tree.map(lambda s: s.sharding, self.state)

  @property
  def checkpoint_state(self) -> Any:
    """The abstract state as its checkpoint stores it (`to_checkpoint`)."""
    return to_checkpoint(self.state)


def build(config: mlc.ConfigDict, models: Models, mesh: jax.sharding.Mesh, *,
          total_steps: int, warmup_steps: int) -> TrainSetup:
  """Optimizer, abstract sharded state and the jitted, donated train step.

  State in its fsdp shardings, the batch split over the mesh's batch axes,
  teachers in whatever sharding they were put in, metrics replicated.
  """
  shapes = variable_shapes(models.student, models.res["student"])
  with config_errors():
    tx, schedule = optim.make(config, shapes["params"], total_steps=total_steps,
                              warmup_steps=warmup_steps)

  def new_state(variables):
    return {"variables": variables, "opt": tx.init(variables["params"]),
            "step": jnp.zeros([], jnp.int32)}
  state_shape = jax.eval_shape(new_state, shapes)
  state_sharding = parallel.param_shardings(mesh, state_shape, config.fsdp_min_size)
  state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                       state_shape, state_sharding)

  def init_state(key):
    return new_state(init_variables(models.student, models.res["student"], key))

  update = make_update_fn(config, models, tx, schedule)
  batch_sharding = parallel.batch_sharding(mesh)
  if input_modes.cache_mode(config) == "device":
    # The batch is made inside the step from the device-resident data set
    # (replicated): no host work and no transfer per step.
    from big_distill.data import device as device_data  # pylint: disable=g-import-not-at-top
    with config_errors():
      make_batch = device_data.batch_fn(config)

    def step_fn(state, teacher_variables, data):
      batch = jax.lax.with_sharding_constraint(make_batch(data, state["step"]), batch_sharding)
      return update(state, teacher_variables, batch)
    third = parallel.replicated(mesh)
  else:
    step_fn, third = update, batch_sharding
  train_step = jax.jit(step_fn, in_shardings=(state_sharding, None, third),
                       out_shardings=(state_sharding, parallel.replicated(mesh)),
                       donate_argnums=0)
  return TrainSetup(config=config, models=models, mesh=mesh, tx=tx, schedule=schedule,
                    state=state, train_step=train_step,
                    init_state=jax.jit(init_state, out_shardings=state_sharding))


def with_params(s: TrainSetup, state: Any, variables: Any) -> Any:
  """`state` with the student's variables replaced (and a fresh optimizer state).

  `variables`: the student's, as `weights.load_student_init` gives them.
  """
  sharding = s.state_sharding
  variables = jax.tree.map(jax.device_put, variables, sharding["variables"])
  return {**state, "variables": variables,
          "opt": jax.jit(s.tx.init, out_shardings=sharding["opt"])(variables["params"])}
