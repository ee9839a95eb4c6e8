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
peak of `config.compute_dtype` from `PEAKS` (accelerators) or measured with a
large matmul (CPU). Results, commands and H100 projections: docs/performance.md.
bfloat16 against float32 logits: `python -m big_distill.precision`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import resource
import statistics
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
  flags.DEFINE_string("project_device_kind", None, "A device kind from PEAKS (e.g. 'NVIDIA "
                      "H100 80GB HBM3'): add the step time this step would take there at "
                      "--project_mfu.", flag_values=values)
  flags.DEFINE_float("project_mfu", 0.45, "MFU assumed by the projection.", flag_values=values)
  flags.DEFINE_float("demand", None, "With --input: the images/s the train step consumes "
                     "(e.g. measured on the accelerator); default: time the config's step "
                     "here for a few steps.", flag_values=values)
  flags.DEFINE_list("cache_modes", list(input_modes.CACHE_MODES), "With --input: the "
                    "config.input.cache modes to measure.", flag_values=values)

# Dense (no sparsity) peak FLOP/s per JAX device, by device kind (the first
# prefix that matches wins, so specific kinds come first).
# - NVIDIA: the H100 and H200 datasheets (BF16 tensor core 1,979 TFLOPS and
#   TF32 989 TFLOPS *with sparsity* on SXM, i.e. 989.4 and 494.7 dense; H100
#   PCIe 1,513 and 756) and the A100 datasheet (BF16 312, TF32 156 dense).
#   The float32 column is the TF32 tensor-core peak: at JAX's default
#   precision, float32 dots and convolutions run on TF32 tensor cores on
#   A100/H100 (jax-ml/jax issues #12008 and #18934). With
#   --jax_default_matmul_precision=highest the FP32 CUDA-core peak applies
#   instead (67 TFLOPS on H100/H200 SXM, 19.5 on A100), and MFU against the
#   TF32 row reads low.
# - TPU: "Peak compute per chip (bf16)" of cloud.google.com/tpu/docs/v3, v4,
#   v5e and v5p: v3 123 TFLOPS (2 TensorCores, each its own JAX device: 61.5
#   per device), v4 275, v5e ('TPU v5 lite') 197, v5p ('TPU v5') 459 (one JAX
#   device per chip).
#   float32 at JAX's default precision runs as one bf16 pass on the MXU, so
#   its peak is the same.
PEAKS: tuple[tuple[str, float, float], ...] = (
    # (device_kind prefix, bfloat16, float32)
    ("NVIDIA H100 PCIe", 756e12, 378e12),
    ("NVIDIA H100", 989.4e12, 494.7e12),  # 'NVIDIA H100 80GB HBM3' is the SXM part.
    ("NVIDIA H200", 989.4e12, 494.7e12),
    ("NVIDIA A100", 312e12, 156e12),
    ("TPU v3", 61.5e12, 61.5e12),
    ("TPU v4", 275e12, 275e12),
    ("TPU v5 lite", 197e12, 197e12),
    ("TPU v5e", 197e12, 197e12),
    ("TPU v5p", 459e12, 459e12),
    ("TPU v5", 459e12, 459e12),
)

# CPUs have no datasheet peak here: a matmul this large (n x n) measures one.
CPU_PEAK_MATMUL_SIZE = 2048

# The schedule's length only changes the value of its multiplier, not the cost
# of a step, so the benchmark does not need the data set to count steps.
_SCHEDULE_STEPS = 10_000

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles: list[float] = []  # Durations of every backend compile since import.


def _on_event(event: str, seconds: float, **kwargs) -> None:
  del kwargs
  if event == _COMPILE_EVENT:
    _compiles.append(seconds)


jax.monitoring.register_event_duration_secs_listener(_on_event)


# ---------------------------------------------------------------------------
# Peaks.
# ---------------------------------------------------------------------------


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Dense peak FLOP/s of one device of `device_kind` in `dtype`; None if unknown."""
  column = {"bfloat16": 1, "float32": 2}.get(jnp.dtype(dtype).name)
  if column is None:
    return None
  for row in PEAKS:
    if device_kind.startswith(row[0]):
      return row[column]
  return None


def measure_matmul_peak(dtype: str, n: int = 2048, reps: int = 10) -> float:
  """FLOP/s of this device on an n x n matmul in `dtype` (best of `reps`)."""
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((n, n)), jnp.dtype(dtype)) for _ in range(2))
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  best = math.inf
  for _ in range(reps):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


@functools.lru_cache(maxsize=None)
def device_peak(dtype: str) -> tuple[float | None, str]:
  """(peak FLOP/s per device, where it comes from) for the first device."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    n = CPU_PEAK_MATMUL_SIZE
    return measure_matmul_peak(dtype, n), f"measured: {n}x{n} {dtype} matmul on this CPU"
  peak = peak_flops(device.device_kind, dtype)
  return peak, ("datasheet table benchmark.PEAKS" if peak else
                f"unknown device kind {device.device_kind!r}: add it to benchmark.PEAKS")


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


def _cost(stage) -> dict[str, float]:
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per computation.
    cost = cost[0] if cost else {}
  return cost or {}


def flops(jitted, *args, lowered_only: bool = False) -> float:
  """FLOPs of one call of `jitted` on all devices together.

  From the compiled program (after XLA's optimizations), whose cost analysis
  counts one device's share of an SPMD program, times the device count; or,
  with `lowered_only`, from the program before compiling (global already),
  which costs seconds where compiling a large model on a CPU takes minutes.
  """
  lowered = jitted.lower(*args)
  if lowered_only:
    return float(_cost(lowered).get("flops", 0.0))
  return float(_cost(lowered.compile()).get("flops", 0.0)) * jax.device_count()


def planned_bytes(compiled) -> int | None:
  """XLA's buffer plan for one device: arguments + outputs + temporaries, less
  the donated (aliased) bytes. Known before running, on every backend."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _compile(jitted, *args, lowered_only: bool = False) -> dict[str, Any]:
  """Lowers (and compiles) `jitted`: times, FLOPs and planned memory."""
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  out = {"lower_s": time.perf_counter() - start}
  if lowered_only:
    return {**out, "compile_s": None, "flops_per_step": float(_cost(lowered).get("flops", 0.0)),
            "flops_source": "lowered (before XLA optimizations)",
            "planned_device_memory_bytes": None}
  start = time.perf_counter()
  compiled = lowered.compile()
  return {**out, "compile_s": time.perf_counter() - start,
          "flops_per_step": float(_cost(compiled).get("flops", 0.0)) * jax.device_count(),
          "flops_source": "compiled", "planned_device_memory_bytes": planned_bytes(compiled)}


def flop_split(s: Setup, lowered_only: bool = False) -> dict[str, float]:
  """FLOPs of the teachers' forward and the student's forward+backward alone."""
  out = {"teacher_forward": 0.0}  # Fixed teachers: computed once, not in the step.
  if s.models.teachers and not s.fixed:
    out["teacher_forward"] = flops(teacher_forward(s), s.teacher_shape, s.batch_shape["image"],
                                   lowered_only=lowered_only)
  logits = {t: jax.ShapeDtypeStruct((s.batch_size, s.config.num_classes), jnp.float32)
            for t in s.models.teachers}
  # As the step calls it: one-hot (mixed) labels, the student's image only.
  labels = jax.ShapeDtypeStruct((s.batch_size, s.config.num_classes), jnp.float32)
  variables = s.train.state["variables"]
  others = {k: v for k, v in variables.items() if k != "params"}
  out["student_forward_backward"] = flops(
      student_forward_backward(s), variables["params"], others,
      {"student": s.batch_shape["image"]["student"]}, logits, labels,
      lowered_only=lowered_only)
  return out


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------


def time_steps(step: Callable, carry: Callable, args: tuple, *, steps: int,
               warmup: int) -> dict[str, Any]:
  """Runs `args = carry(args, step(*args))` `warmup + 2 * steps` times.

  The first `steps` are synchronized one by one (block_until_ready on the
  output; their median is the step time); the next `steps` run back to back
  and are synchronized once, as the training loop runs them (the window).
  Backend compilations during the calls are counted: after the AOT compile,
  the first call should reuse it and no later call may compile.
  """
  before = len(_compiles)
  start = time.perf_counter()
  out = step(*args)
  jax.block_until_ready(out)
  first = time.perf_counter() - start
  after_first = len(_compiles)
  args = carry(args, out)
  for _ in range(warmup):
    args = carry(args, step(*args))
  jax.block_until_ready(args)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    out = step(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
    args = carry(args, out)
  start = time.perf_counter()
  for _ in range(steps):
    out = step(*args)
    args = carry(args, out)
  jax.block_until_ready(out)
  window = (time.perf_counter() - start) / steps
  return {"first_call_s": first, "step_time_s": statistics.median(times),
          "step_time_min_s": min(times), "step_time_max_s": max(times),
          "window_step_time_s": window, "compiles_in_first_call": after_first - before,
          "recompiles_after_first_call": len(_compiles) - after_first}


def _memory() -> dict[str, Any]:
  stats = jax.devices()[0].memory_stats()
  return {
      "peak_device_memory_bytes": (stats or {}).get("peak_bytes_in_use"),
      # CPU devices have no memory stats: the process's peak resident set
      # (host RAM, all devices and the Python process together) stands in.
      "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
  }


def _header(config: mlc.ConfigDict, mode: str, batch_size: int) -> dict[str, Any]:
  device = jax.devices()[0]
  return {"mode": mode, "device_kind": device.device_kind, "platform": device.platform,
          "device_count": jax.device_count(), "compute_dtype": config.compute_dtype,
          "global_batch": batch_size,
          "res": {"student": config.student_res,
                  **{t: config[f"{t}_res"] for t in config.teachers}}}


def _rates(out: dict[str, Any], dtype: str) -> None:
  n = jax.device_count()
  peak, source = device_peak(dtype)
  out["images_per_s"] = out["global_batch"] / out["step_time_s"]
  out["images_per_s_per_device"] = out["images_per_s"] / n
  out["peak_flops_per_device"] = peak
  out["peak_source"] = source
  out["mfu"] = out["flops_per_step"] / out["step_time_s"] / (peak * n) if peak else None


def projection(flops_per_step: float, batch_size: int, dtype: str, device_kind: str,
               mfu: float) -> dict[str, Any]:
  """The step time on one device of `device_kind` at `mfu`: arithmetic, not a run."""
  peak = peak_flops(device_kind, dtype)
  if peak is None:
    raise errors.ConfigError(f"--project_device_kind={device_kind!r} with {dtype} is not in "
                     "benchmark.PEAKS.")
  step = flops_per_step / (mfu * peak)
  return {"device_kind": device_kind, "mfu": mfu, "peak_flops": peak, "step_time_s": step,
          "images_per_s": batch_size / step, "note": "projection, not a measurement"}


def run_train(config: mlc.ConfigDict, *, steps: int, warmup: int, flops_only: bool = False,
              lowered_only: bool = False, project_kind: str | None = None,
              project_mfu: float = 0.45) -> dict[str, Any]:
  """The train step's figures (see the module docstring)."""
  s = build(config)
  out = _header(config, "flops_only" if flops_only else "train", s.batch_size)
  out["teacher_outputs"] = "precomputed" if s.fixed else "forward"
  out.update(_compile(s.train.train_step, s.train.state, s.step_teacher_shape, s.batch_shape,
                      lowered_only=lowered_only))
  split = flop_split(s, lowered_only)
  out["flops"] = {**split, "other": out["flops_per_step"] - sum(split.values())}
  if project_kind:
    out["projection"] = projection(out["flops_per_step"], s.batch_size, config.compute_dtype,
                                   project_kind, project_mfu)
  if flops_only:
    return out

  batch = jax.device_put(synthetic_batch(config, s.models.res, s.batch_size), s.batch_sharding)
  teachers = {} if s.fixed else s.init_teachers()
  args = (s.train.init_state(init_key(config.seed)), teachers, batch)
  out.update(time_steps(s.train.train_step, lambda a, o: (o[0], a[1], a[2]), args,
                        steps=steps, warmup=warmup))
  _rates(out, config.compute_dtype)
  out.update(_memory())
  return out


def run_eval(config: mlc.ConfigDict, *, steps: int, warmup: int) -> dict[str, Any]:
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
  out.update(_compile(step, s.train.state["variables"], s.teacher_shape,
                      s.batch_shape["image"]))
  teacher = flops(teacher_forward(s), s.teacher_shape, s.batch_shape["image"]) \
      if s.models.teachers else 0.0
  out["flops"] = {"teacher_forward": teacher, "student_forward": out["flops_per_step"] - teacher}

  batch = jax.device_put(synthetic_batch(config, s.models.res, batch_size), s.batch_sharding)
  args = (setup.student_weights(s.train.init_state(init_key(config.seed))), s.init_teachers(),
          batch["image"])
  out.update(time_steps(step, lambda a, o: a, args, steps=steps, warmup=warmup))
  _rates(out, config.compute_dtype)
  out.update(_memory())
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
  times = time_steps(make, lambda a, o: a, (data, jnp.int32(7)), steps=steps, warmup=warmup)
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
