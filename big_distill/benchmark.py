r"""Step time, FLOPs and MFU of a config's train step, on synthetic data.

    python -m big_distill.benchmark --config=configs/flowers_r50.py:runlocal \
        [--config.compute_dtype=bfloat16] [--steps=20] [--warmup=3]

Prints one JSON line. The step is the one `train.py` runs, built by the same
`big_distill.setup` functions (update function, shardings, donation);
teachers are random (with a random, nonzero head), so no checkpoint and no
data set is needed. A fixed-teacher config (`config.distill.fixed`) is timed
on its own step: the batch carries random precomputed teacher outputs, the
step has no teacher forward (`"teacher_outputs": "precomputed"`, teacher FLOPs
0), so its figures read beside function matching's (`"forward"`). Other modes:

    --eval        the evaluation forward (student and teachers) on an eval batch;
    --input       the input pipeline alone, on the config's real data
                  (`big_distill.data.throughput.measure`);
    --flops_only  compile without running: FLOPs and planned memory, e.g. for a
                  model too large to run here (`--lowered_only`: FLOPs of the
                  program before compiling, in seconds); `--project_device_kind`
                  and `--project_mfu` turn the FLOPs into a projected step time.

The batch is made once and stays on the devices, so the step time excludes
the input pipeline and the host-to-device copy (`--input` measures the
former; train.py prefetches batches to overlap the latter). The step is
compiled ahead of time (`compile_s`); `compiles_in_first_call` (0: the calls
reuse that executable) and `recompiles_after_first_call` (must be 0) count
backend compilations seen by jax.monitoring while the steps run.

FLOPs come from XLA's cost analysis of the compiled step (per device, times
the number of devices), split into the teachers' forward and the student's
forward+backward by compiling those parts alone (the very functions the step
calls: `setup.make_teacher_forward` and `setup.make_loss`); `other` is the
rest (mixup, optimizer, metrics). MFU is FLOPs / step time / (peak x devices), with the
peak of `config.compute_dtype` from `costs.PEAKS` (accelerators) or measured with a
large matmul (CPU). Results, commands and H100 projections: docs/performance.md.
bfloat16 against float32 logits: `python -m big_distill.precision`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections as mlc
from ml_collections import config_flags
import numpy as np

from big_distill import checks
from big_distill import config_lib
from big_distill import costs
from big_distill import errors
from big_distill import input_modes
from big_distill import model_set
from big_distill import parallel
from big_distill import plan
from big_distill import setup
from big_distill import weights

# The input pipeline (TensorFlow) is imported by `--input` alone: the step on
# synthetic batches runs where TensorFlow is not installed (an accelerator
# image), and `--input` there says it was skipped.


def define_flags(values: flags.FlagValues | None = None) -> None:
  """The command's flags (only when run as a command: importing defines none)."""
  values = values if values is not None else flags.FLAGS
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. "
                                  "configs/flowers_r50.py:runlocal.", flag_values=values,
                                  lock_config=True)
  flags.DEFINE_integer("steps", 20, "Timed steps (each timed twice: synchronized "
                       "one by one for the median, then as one window).", flag_values=values)
  flags.DEFINE_integer("warmup", 3, "Steps run after compiling, before timing.",
                       flag_values=values)
  flags.DEFINE_bool("eval", False, "Measure the evaluation step.", flag_values=values)
  flags.DEFINE_bool("input", False, "Measure the input pipeline on real data.",
                    flag_values=values)
  flags.DEFINE_bool("flops_only", False, "Compile only: FLOPs and planned memory.",
                    flag_values=values)
  flags.DEFINE_bool("lowered_only", False, "With --flops_only: FLOPs of the program before "
                    "compiling (seconds, where compiling a large model on a CPU takes "
                    "minutes).", flag_values=values)
  flags.DEFINE_string("project_device_kind", None, "A device kind from costs.PEAKS (e.g. 'NVIDIA "
                      "H100 80GB HBM3'): add the step time this step would take there at "
                      "--project_mfu.", flag_values=values)
  flags.DEFINE_float("project_mfu", 0.45, "MFU assumed by the projection.", flag_values=values)
  flags.DEFINE_float("demand", None, "With --input: the images/s the train step consumes "
                     "(e.g. measured on the accelerator); default: time the config's step "
                     "here for a few steps.", flag_values=values)
  flags.DEFINE_list("cache_modes", list(input_modes.CACHE_MODES), "With --input: the "
                    "config.input.cache modes to measure.", flag_values=values)

# The schedule's length only changes the value of its multiplier, not the cost
# of a step, so the benchmark does not need the data set to count steps.
_SCHEDULE_STEPS = 10_000

# ---------------------------------------------------------------------------
# Synthetic inputs and the jitted steps, built as train.py builds them.
# ---------------------------------------------------------------------------


def synthetic_batch(config: mlc.ConfigDict, res: dict[str, int], batch_size: int,
                    seed: int = 0) -> dict[str, Any]:
  """A batch of docs/DESIGN.md's shape: images in [-1, 1] and labels.

  With fixed teachers (`config.distill.fixed`) the batch also carries their
  precomputed outputs, `"teacher_logits"` {teacher: f32[b, K]}, as the
  training stream does (`precompute.with_targets`).
  """
  rng = np.random.default_rng(seed)
  images = {name: rng.uniform(-1, 1, (batch_size, r, r, 3)).astype(np.float32)
            for name, r in res.items()}
  batch = {"image": images,
           "label": rng.integers(0, config.num_classes, batch_size).astype(np.int32)}
  if config.distill.fixed:
    batch["teacher_logits"] = {
        t: rng.normal(0, 1, (batch_size, config.num_classes)).astype(np.float32)
        for t in config.teachers}
  return batch


def init_key(seed: int) -> jax.Array:
  """The key of the random weights. They only need to look random: the
  'unsafe_rbg' generator compiles several times faster than threefry on CPU
  (seconds per model here), and train.py's own keys (mixup) are untouched."""
  return jax.random.key(seed, impl="unsafe_rbg")


def abstract_teachers(config: mlc.ConfigDict, models: model_set.Models, mesh) -> dict[str, Any]:
  """The teachers' parameters as `load_teachers` places them, as ShapeDtypeStructs."""
  shapes = {t: model_set.weight_shapes(models, t) for t in models.teachers}
  sharding = parallel.param_shardings(mesh, shapes, config.fsdp_min_size)
  dtype = jnp.dtype(config.compute_dtype)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype, sharding=sh),
                      shapes, sharding)


def random_teachers(config: mlc.ConfigDict, models: model_set.Models, mesh, key) -> dict[str, Any]:
  """Random teachers, sharded and cast as `load_teachers` puts real ones."""
  def init():
    return {t: weights.random_params(m, models.res[t], jax.random.fold_in(key, i + 1),
                             jnp.dtype(config.compute_dtype))
            for i, (t, m) in enumerate(models.teachers.items())}
  sharding = jax.tree.map(lambda s: s.sharding, abstract_teachers(config, models, mesh))
  return jax.jit(init, out_shardings=sharding)()


@dataclasses.dataclass
class Setup:
  """The trainer's set-up, with the abstract (shape, dtype, sharding) arguments
  of its step and random teachers in place of checkpoints."""
  config: mlc.ConfigDict
  train: setup.TrainSetup
  batch_size: int
  batch_sharding: Any
  teacher_shape: Any        # abstract, with shardings
  batch_shape: Any          # abstract, with shardings

  @property
  def models(self) -> model_set.Models:
    return self.train.models

  @property
  def fixed(self) -> bool:
    """Whether the step reads precomputed teacher outputs (no teacher forward)."""
    return bool(self.config.distill.fixed)

  @property
  def step_teacher_shape(self) -> Any:
    """The train step's teachers: none with fixed teachers (it reads their
    precomputed outputs from the batch, and never their weights)."""
    return {} if self.fixed else self.teacher_shape

  def init_teachers(self) -> Any:
    return random_teachers(self.config, self.models, self.train.mesh,
                                 init_key(self.config.seed))


def build(config: mlc.ConfigDict, batch_size: int | None = None) -> Setup:
  """The jitted train step of `config`, built as train.py builds it.

  With `input.cache="device"` the step is timed on a ready batch like the
  others (the batch making is `--input`'s "device" figure).
  """
  if config.input.cache == "device":
    config = with_fields(config, **{"input.cache": "none"})
  checks.check_step_config(config)  # The step's: no data is read (nor pp strings).
  models = model_set.build_models(config)
  batch_size = batch_size or config.input.batch_size
  mesh = plan.make_mesh(config, batch_size)
  s = setup.build(config, models, mesh, total_steps=_SCHEDULE_STEPS, warmup_steps=0)
  batch_sharding = parallel.batch_sharding(mesh)
  batch_shape = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding),
      synthetic_batch(config, models.res, batch_size))
  return Setup(config=config, train=s, batch_size=batch_size, batch_sharding=batch_sharding,
               teacher_shape=abstract_teachers(config, models, mesh),
               batch_shape=batch_shape)


def teacher_forward(s: Setup) -> Callable:
  """`(teacher_params, images) -> {teacher: logits}`: the teachers' share of the step."""
  return jax.jit(setup.make_teacher_forward(s.models), in_shardings=(None, s.batch_sharding))


def student_forward_backward(s: Setup) -> Callable:
  """`(params, others, images, teacher_logits, labels) -> ((loss, aux), grads)`: the
  student's share of the step, the step's own loss function."""
  return jax.jit(jax.value_and_grad(setup.make_loss(s.config, s.models), has_aux=True))


def flop_split(s: Setup, lowered_only: bool = False) -> dict[str, float]:
  """FLOPs of the teachers' forward and the student's forward+backward alone."""
  out = {"teacher_forward": 0.0}  # Fixed teachers: computed once, not in the step.
  if s.models.teachers and not s.fixed:
    out["teacher_forward"] = costs.flops(teacher_forward(s), s.teacher_shape,
                                         s.batch_shape["image"], lowered_only=lowered_only)
  logits = {t: jax.ShapeDtypeStruct((s.batch_size, s.config.num_classes), jnp.float32)
            for t in s.models.teachers}
  # As the step calls it: one-hot (mixed) labels, the student's image only.
  labels = jax.ShapeDtypeStruct((s.batch_size, s.config.num_classes), jnp.float32)
  variables = s.train.state["variables"]
  others = {k: v for k, v in variables.items() if k != "params"}
  out["student_forward_backward"] = costs.flops(
      student_forward_backward(s), variables["params"], others,
      {"student": s.batch_shape["image"]["student"]}, logits, labels,
      lowered_only=lowered_only)
  return out


def _header(config: mlc.ConfigDict, mode: str, batch_size: int) -> dict[str, Any]:
  device = jax.devices()[0]
  return {"mode": mode, "device_kind": device.device_kind, "platform": device.platform,
          "device_count": jax.device_count(), "compute_dtype": config.compute_dtype,
          "global_batch": batch_size,
          "res": {"student": config.student_res,
                  **{t: config[f"{t}_res"] for t in config.teachers}}}


def run_train(config: mlc.ConfigDict, *, steps: int, warmup: int, flops_only: bool = False,
              lowered_only: bool = False, project_kind: str | None = None,
              project_mfu: float = 0.45, cpu_matmul_size: int | None = None
              ) -> dict[str, Any]:
  """The train step's figures (see the module docstring); on a CPU, the MFU's
  peak is measured on a `cpu_matmul_size`-square matmul (costs.device_peak)."""
  s = build(config)
  out = _header(config, "flops_only" if flops_only else "train", s.batch_size)
  out["teacher_outputs"] = "precomputed" if s.fixed else "forward"
  out.update(costs.compile_program(s.train.train_step, s.train.state, s.step_teacher_shape,
                                   s.batch_shape, lowered_only=lowered_only))
  split = flop_split(s, lowered_only)
  out["flops"] = {**split, "other": out["flops_per_step"] - sum(split.values())}
  if project_kind:
    out["projection"] = costs.projection(out["flops_per_step"], s.batch_size, config.compute_dtype,
                                   project_kind, project_mfu)
  if flops_only:
    return out

  batch = jax.device_put(synthetic_batch(config, s.models.res, s.batch_size), s.batch_sharding)
  teachers = {} if s.fixed else s.init_teachers()
  args = (s.train.init_state(init_key(config.seed)), teachers, batch)
  out.update(costs.time_steps(s.train.train_step, lambda a, o: (o[0], a[1], a[2]), args,
                        steps=steps, warmup=warmup))
  costs.rates(out, config.compute_dtype, cpu_matmul_size)
  out.update(costs.memory())
  return out


def run_eval(config: mlc.ConfigDict, *, steps: int, warmup: int,
             cpu_matmul_size: int | None = None) -> dict[str, Any]:
  """The evaluation forward: the student and every teacher on one eval batch
  (the batch size of the first evaluator in `config.evals`, else the training
  one). The evaluators' metric sums are left out: they cost next to nothing."""
  first = next(iter(config.evals.values()), None)
  batch_size = (first and first.batch_size) or config.input.batch_size
  s = build(config, batch_size)
  out = _header(config, "eval", batch_size)
  predict = setup.make_predict(s.models)
  which = ("student", *s.models.teachers)
  step = jax.jit(lambda sp, tp, images: predict(sp, tp, images, which),
                 in_shardings=(None, None, s.batch_sharding))
  out.update(costs.compile_program(step, s.train.state["variables"], s.teacher_shape,
                      s.batch_shape["image"]))
  teacher = costs.flops(teacher_forward(s), s.teacher_shape, s.batch_shape["image"]) \
      if s.models.teachers else 0.0
  out["flops"] = {"teacher_forward": teacher, "student_forward": out["flops_per_step"] - teacher}

  batch = jax.device_put(synthetic_batch(config, s.models.res, batch_size), s.batch_sharding)
  args = (setup.student_weights(s.train.init_state(init_key(config.seed))), s.init_teachers(),
          batch["image"])
  out.update(costs.time_steps(step, lambda a, o: a, args, steps=steps, warmup=warmup))
  costs.rates(out, config.compute_dtype, cpu_matmul_size)
  out.update(costs.memory())
  return out


def with_fields(config: mlc.ConfigDict, **fields) -> mlc.ConfigDict:
  """A resolved copy of `config` with `fields` (dotted names: "input.cache") set."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for k, v in fields.items():
      node, _, leaf = k.rpartition(".")
      (config[node] if node else config)[leaf] = v
  return config


def device_batch_time(config: mlc.ConfigDict, *, steps: int, warmup: int) -> dict[str, Any]:
  """The device cache's batch making alone, timed on the devices (no host work)."""
  # pylint: disable=g-import-not-at-top
  from big_distill import feeding
  from big_distill.data import device as device_data
  # pylint: enable=g-import-not-at-top
  mesh = plan.make_mesh(config)
  start = time.perf_counter()
  data = feeding.prepare_train_data(config, mesh)
  prepare_s = time.perf_counter() - start
  make = jax.jit(device_data.batch_fn(config), out_shardings=parallel.batch_sharding(mesh))
  # The same step each call: the work does not depend on which step it is.
  times = costs.time_steps(make, lambda a, o: a, (data, jnp.int32(7)), steps=steps, warmup=warmup)
  return {"examples_per_s": config.input.batch_size / times["step_time_s"],
          "batch_time_s": times["step_time_s"], "prepare_s": prepare_s,
          "device_bytes": data.nbytes, "host_work_per_step": 0,
          "recompiles_after_first_call": times["recompiles_after_first_call"]}


def run_input(config: mlc.ConfigDict, *, steps: int, warmup: int,
              modes: tuple[str, ...] = input_modes.CACHE_MODES,
              demand: float | None = None) -> dict[str, Any]:
  """The input's examples/s in each cache mode, beside what the train step consumes.

  Host modes ("none", "encoded", "decoded") are the tf.data pipeline alone on
  this host's cores; "device" is the batch made on the accelerator (no host
  work per step). `input_bound[mode]` says whether that input is slower than
  the step's demand (`demand`, else the step timed here).
  """
  # pylint: disable=g-import-not-at-top
  from big_distill.data import datasets
  from big_distill.data import input as input_lib
  from big_distill.data import throughput
  # pylint: enable=g-import-not-at-top
  checks.check_config(config)
  datasets.check_prepared(config.input.data)
  out = _header(config, "input", config.input.batch_size)
  cores = os.cpu_count() or 1
  out.update(data=config.input.data.name, split=config.input.data.split,
             views=config.distill.views, cache=config.input.cache, host_cores=cores)
  per_mode = {}
  for mode in modes:
    c = with_fields(config, **{"input.cache": mode})
    if mode == "device":
      try:
        per_mode[mode] = device_batch_time(c, steps=steps, warmup=warmup)
      except errors.ConfigError as e:  # E.g. a random view it does not implement.
        per_mode[mode] = {"error": str(e)}
      continue
    start = time.perf_counter()
    decoded = input_lib.decode_training_set(c) if mode == "decoded" else None
    rate = throughput.measure(c, steps, warmup=warmup, decoded=decoded)
    per_mode[mode] = {"examples_per_s": rate, "examples_per_s_per_core": rate / cores,
                      "prepare_s": time.perf_counter() - start}
  out["cache_modes"] = per_mode
  own = per_mode.get(config.input.cache, {})
  out["examples_per_s"] = own.get("examples_per_s")
  if demand is None:
    step = run_train(with_fields(config, **{"input.cache": "none"}), steps=max(steps // 4, 2),
                     warmup=1)
    demand, source = step["images_per_s"], f"train step timed here ({step['device_kind']})"
  else:
    source = "--demand"
  out["step_demand_images_per_s"], out["step_demand_source"] = demand, source
  out["input_bound"] = {m: r["examples_per_s"] < demand for m, r in per_mode.items()
                        if "examples_per_s" in r}
  return out


def input_pipeline_missing() -> str | None:
  """Why the input pipeline (tf.data, TFDS) cannot run here, or None if it can."""
  # pylint: disable=g-import-not-at-top,unused-import
  try:
    import tensorflow
    import tensorflow_datasets
  except ModuleNotFoundError as e:
    if e.name not in ("tensorflow", "tensorflow_datasets"):
      raise
    return f"{e.name} is not installed here"
  # pylint: enable=g-import-not-at-top,unused-import
  return None


def main(argv):
  del argv
  f = flags.FLAGS
  if not f["config"].present:
    raise app.UsageError("Give --config=configs/X.py[:args].")
  picked = [m for m in ("eval", "input", "flops_only") if f[m].value]
  if len(picked) > 1:
    raise app.UsageError(f"Choose one of --eval, --input, --flops_only; got {picked}.")
  mode = picked[0] if picked else "train"
  with errors.reported("big_distill.benchmark"):
    config = f.config  # The config file runs here: its errors are caught too.
    if mode in ("train", "flops_only"):
      out = run_train(config, steps=f.steps, warmup=f.warmup, flops_only=mode == "flops_only",
                      lowered_only=f.lowered_only, project_kind=f.project_device_kind,
                      project_mfu=f.project_mfu)
    elif mode == "eval":
      out = run_eval(config, steps=f.steps, warmup=f.warmup)
    elif (missing := input_pipeline_missing()) is not None:
      print(f"big_distill.benchmark: --input skipped: {missing}, and the input pipeline is "
            "tf.data; measure it on a host with TensorFlow (the step's demand: "
            "--demand=<images/s of this step>).", flush=True)
      return
    else:
      out = run_input(config, steps=f.steps, warmup=f.warmup, modes=tuple(f.cache_modes),
                      demand=f.demand)
  print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=config_lib.flags_parser("big_distill.benchmark"))
