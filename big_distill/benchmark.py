r"""Step time, FLOPs and MFU of a config's train step, on synthetic data.

    python -m big_distill.benchmark --config=configs/flowers_r50.py:runlocal \
        [--config.compute_dtype=bfloat16] [--steps=20] [--warmup=3]

Prints one JSON line. The step is the one `train.py` runs (the same update
function, shardings and donation); teachers are random (with a random, nonzero
head), so no checkpoint and no data set is needed. Other modes:

    --eval        the evaluation forward (student and teachers) on an eval batch;
    --input       the input pipeline alone, on the config's real data
                  (`big_distill.data.throughput`);
    --precision   bfloat16 against float32 logits of the config's models;
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
forward+backward by compiling those parts alone; `other` is the rest (mixup,
optimizer, metrics). MFU is FLOPs / step time / (peak x devices), with the
peak of `config.compute_dtype` from `PEAKS` (accelerators) or measured with a
large matmul (CPU). Results, commands and H100 projections: docs/performance.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from big_distill import distill
from big_distill import optim
from big_distill import parallel
from big_distill import train as train_lib

# `--config` (with `--config.field=value` overrides) is the flag train.py
# defines when it is imported; read it as flags.FLAGS.config.
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (each timed twice: synchronized "
                              "one by one for the median, then as one window).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Steps run after compiling, before timing.")
_EVAL = flags.DEFINE_bool("eval", False, "Measure the evaluation step.")
_INPUT = flags.DEFINE_bool("input", False, "Measure the input pipeline on real data.")
_PRECISION = flags.DEFINE_bool("precision", False, "Compare bfloat16 with float32 logits.")
_FLOPS_ONLY = flags.DEFINE_bool("flops_only", False, "Compile only: FLOPs and planned memory.")
_LOWERED_ONLY = flags.DEFINE_bool(
    "lowered_only", False, "With --flops_only: FLOPs of the program before compiling "
    "(seconds, where compiling a large model on a CPU takes minutes).")
_PROJECT_KIND = flags.DEFINE_string(
    "project_device_kind", None, "A device kind from PEAKS (e.g. 'NVIDIA H100 80GB HBM3'): "
    "add the step time this step would take there at --project_mfu.")
_PROJECT_MFU = flags.DEFINE_float("project_mfu", 0.45, "MFU assumed by the projection.")

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

# bfloat16 logits may differ from float32 ones (relative L2) by at most this
# many times the network's own sensitivity: the change of float32 logits when
# only the input is rounded to bfloat16, floored at bfloat16's precision (2^-8:
# a network insensitive to its input still has every activation, and a
# teacher every weight, rounded). Teachers run with bfloat16 *weights*
# (train.py casts them once), on top of the bfloat16 activations that
# tests/test_bit.py bounds for the model alone (measured there: ~3x).
BF16_EPS = 2.0**-8
BF16_RATIO_TOL = 5.0

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
  """A batch of docs/DESIGN.md's shape: images in [-1, 1] and labels."""
  rng = np.random.default_rng(seed)
  images = {name: rng.uniform(-1, 1, (batch_size, r, r, 3)).astype(np.float32)
            for name, r in res.items()}
  return {"image": images,
          "label": rng.integers(0, config.num_classes, batch_size).astype(np.int32)}


def init_key(seed: int) -> jax.Array:
  """The key of the random weights. They only need to look random: the
  'unsafe_rbg' generator compiles several times faster than threefry on CPU
  (seconds per model here), and train.py's own keys (mixup) are untouched."""
  return jax.random.key(seed, impl="unsafe_rbg")


def _init_params(model, res: int, key):
  return model.init(key, jnp.zeros((1, res, res, 3), jnp.float32))["params"]


def random_teacher(model, res: int, key, dtype) -> Any:
  """Random teacher parameters with a random head (BiT's head starts at zero,
  which would make every teacher output uniform), cast to `dtype`."""
  params = _init_params(model, res, key)
  kernel = params["head"]["kernel"]
  head = jax.random.normal(jax.random.fold_in(key, 1), kernel.shape) / math.sqrt(kernel.shape[0])
  params = {**params, "head": {**params["head"], "kernel": head}}
  return jax.tree.map(lambda x: x.astype(dtype), params)


def _abstract(shape_tree, sharding_tree):
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shape_tree, sharding_tree)


@dataclasses.dataclass
class Setup:
  """Everything a measurement needs: models, mesh, jitted functions and the
  abstract (shape, dtype, sharding) arguments they are compiled for."""
  config: mlc.ConfigDict
  models: train_lib.Models
  mesh: Any
  batch_size: int
  batch_sharding: Any
  state_shape: Any          # abstract, with shardings
  teacher_shape: Any        # abstract, with shardings
  batch_shape: Any          # abstract, with shardings
  train_step: Callable
  init_state: Callable      # key -> state, sharded
  init_teachers: Callable   # () -> teacher params, sharded, in compute dtype


def build(config: mlc.ConfigDict, batch_size: int | None = None) -> Setup:
  """The jitted train step of `config` with its abstract arguments.

  The lines below follow `train.train()` (mesh, optimizer, shardings,
  `make_update_fn`, jit with donation); see docs/performance.md for the
  refactor that would let both share one function.
  """
  train_lib.check_config(config)
  models = train_lib.build_models(config)
  batch_size = batch_size or config.input.batch_size
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_size(batch_size, mesh)
  batch_sharding = parallel.batch_sharding(mesh)
  rng = init_key(config.seed)

  student_shape = jax.eval_shape(
      functools.partial(_init_params, models.student, models.res["student"]), rng)
  tx, schedule = optim.make(config, student_shape, total_steps=_SCHEDULE_STEPS, warmup_steps=0)
  state_shape = jax.eval_shape(lambda p: {"params": p, "opt": tx.init(p),
                                          "step": jnp.zeros([], jnp.int32)}, student_shape)
  state_sharding = parallel.param_shardings(mesh, state_shape, config.fsdp_min_size)

  dtype = jnp.dtype(config.compute_dtype)
  teacher_keys = {t: jax.random.fold_in(rng, i + 1) for i, t in enumerate(models.teachers)}

  def init_teachers():
    return {t: random_teacher(m, models.res[t], teacher_keys[t], dtype)
            for t, m in models.teachers.items()}

  teacher_eval_shape = jax.eval_shape(init_teachers)
  teacher_sharding = parallel.param_shardings(mesh, teacher_eval_shape, config.fsdp_min_size)

  def init_state(key):
    params = _init_params(models.student, models.res["student"], key)
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros([], jnp.int32)}

  train_step = train_lib.make_train_step(config, models, tx, schedule, mesh, state_sharding)
  batch_shape = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding),
      synthetic_batch(config, models.res, batch_size))
  return Setup(
      config=config, models=models, mesh=mesh, batch_size=batch_size,
      batch_sharding=batch_sharding,
      state_shape=_abstract(state_shape, state_sharding),
      teacher_shape=_abstract(teacher_eval_shape, teacher_sharding),
      batch_shape=batch_shape, train_step=train_step,
      init_state=jax.jit(init_state, out_shardings=state_sharding),
      init_teachers=jax.jit(init_teachers, out_shardings=teacher_sharding))


def teacher_forward(s: Setup) -> Callable:
  """`(teacher_params, images) -> {teacher: logits}`: the teachers' share of a step."""
  predict = train_lib.make_predict(s.models)
  which = tuple(s.models.teachers)
  return jax.jit(lambda tp, images: predict(None, tp, images, which),
                 in_shardings=(None, s.batch_sharding))


def student_forward_backward(s: Setup) -> Callable:
  """`(params, images, teacher_logits, labels) -> (loss, grads)`: the student's share."""
  config, models = s.config, s.models
  loss_fn = distill.from_config(config.distill)
  teachers = tuple(config.teachers)
  label_weight = config.distill.label_weight if teachers else 1.0
  apply = models.student.apply
  if config.remat_student:
    apply = jax.checkpoint(apply)

  def loss(params, images, teacher_logits, labels):
    logits = apply({"params": params}, images, train=True)[0]
    total = sum((loss_fn(logits, teacher_logits[t]).mean() for t in teachers),
                jnp.zeros([], jnp.float32))
    if label_weight:
      onehot = jax.nn.one_hot(labels, config.num_classes, dtype=jnp.float32)
      total = total + label_weight * distill.softmax_xent(logits, onehot).mean()
    return total

  return jax.jit(jax.value_and_grad(loss))


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
  out = {"teacher_forward": 0.0}
  if s.models.teachers:
    out["teacher_forward"] = flops(teacher_forward(s), s.teacher_shape, s.batch_shape["image"],
                                   lowered_only=lowered_only)
  logits = {t: jax.ShapeDtypeStruct((s.batch_size, s.config.num_classes), jnp.float32)
            for t in s.models.teachers}
  out["student_forward_backward"] = flops(
      student_forward_backward(s), s.state_shape["params"], s.batch_shape["image"]["student"],
      logits, s.batch_shape["label"], lowered_only=lowered_only)
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
    raise ValueError(f"--project_device_kind={device_kind!r} with {dtype} is not in "
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
  out.update(_compile(s.train_step, s.state_shape, s.teacher_shape, s.batch_shape,
                      lowered_only=lowered_only))
  split = flop_split(s, lowered_only)
  out["flops"] = {**split, "other": out["flops_per_step"] - sum(split.values())}
  if project_kind:
    out["projection"] = projection(out["flops_per_step"], s.batch_size, config.compute_dtype,
                                   project_kind, project_mfu)
  if flops_only:
    return out

  batch = jax.device_put(synthetic_batch(config, s.models.res, s.batch_size), s.batch_sharding)
  args = (s.init_state(init_key(config.seed)), s.init_teachers(), batch)
  out.update(time_steps(s.train_step, lambda a, o: (o[0], a[1], a[2]), args,
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
  predict = train_lib.make_predict(s.models)
  which = ("student", *s.models.teachers)
  step = jax.jit(lambda sp, tp, images: predict(sp, tp, images, which),
                 in_shardings=(None, None, s.batch_sharding))
  out.update(_compile(step, s.state_shape["params"], s.teacher_shape, s.batch_shape["image"]))
  teacher = flops(teacher_forward(s), s.teacher_shape, s.batch_shape["image"]) \
      if s.models.teachers else 0.0
  out["flops"] = {"teacher_forward": teacher, "student_forward": out["flops_per_step"] - teacher}

  batch = jax.device_put(synthetic_batch(config, s.models.res, batch_size), s.batch_sharding)
  args = (s.init_state(init_key(config.seed))["params"], s.init_teachers(),
          batch["image"])
  out.update(time_steps(step, lambda a, o: a, args, steps=steps, warmup=warmup))
  _rates(out, config.compute_dtype)
  out.update(_memory())
  return out


def run_input(config: mlc.ConfigDict, config_args: list[str], *, steps: int,
              warmup: int) -> dict[str, Any]:
  """The input pipeline alone on the config's prepared data (host only).

  Runs `python -m big_distill.data.throughput` with the same `--config` flags:
  that module defines `--config` and `--warmup` flags of its own when it is
  imported, which clash with train.py's and this module's.
  """
  from big_distill.data import input as input_lib  # pylint: disable=g-import-not-at-top
  input_lib.check_prepared(config.input.data)
  out = _header(config, "input", config.input.batch_size)
  out.update(data=config.input.data.name, split=config.input.data.split,
             views=config.distill.views, cache_raw=config.input.cache_raw)
  cmd = [sys.executable, "-m", "big_distill.data.throughput", *config_args,
         f"--num_batches={steps}", f"--warmup={warmup}"]
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  found = re.search(r"^([0-9.]+) examples/s", done.stdout, re.MULTILINE)
  if done.returncode or not found:
    raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
  out["examples_per_s"] = float(found[1])
  return out


def _predict_fn(config: mlc.ConfigDict, dtype: str, which: tuple[str, ...]) -> Callable:
  c = mlc.ConfigDict(config.to_dict())
  c.compute_dtype = dtype
  predict = train_lib.make_predict(train_lib.build_models(c))
  jitted = jax.jit(lambda params, images: predict(
      params["student"], {t: params[t] for t in which if t != "student"}, images, which))
  return lambda params, images: {k: np.asarray(v, np.float64)
                                 for k, v in jitted(params, images).items()}


def _precision_inputs(config: mlc.ConfigDict, models: train_lib.Models, batch_size: int):
  """(images, source): a batch of the config's training data where it is
  prepared (trained weights see the images they know), else synthetic."""
  from big_distill.data import input as input_lib  # pylint: disable=g-import-not-at-top
  try:
    input_lib.check_prepared(config.input.data)
  except (input_lib.DataNotPreparedError, ValueError):
    return synthetic_batch(config, models.res, batch_size)["image"], "synthetic"
  batch = next(input_lib.make_train_dataset(config).as_numpy_iterator())
  return {k: np.asarray(v[:batch_size], np.float32) for k, v in batch["image"].items()}, "data"


def _precision_params(config: mlc.ConfigDict, models: train_lib.Models, which) -> tuple:
  """float32 weights per model, from its checkpoint (`config.student_init`,
  `config.<teacher>_init`) where that file exists, else random; and which."""
  rng = init_key(config.seed)
  all_models = {"student": models.student, **models.teachers}
  # Random heads: BiT's zero-initialized head would make every logit 0.
  params = jax.jit(lambda: {
      name: random_teacher(all_models[name], models.res[name], jax.random.fold_in(rng, i),
                           jnp.float32) for i, name in enumerate(which)})()
  source = {}
  for name in which:
    path = config.get(f"{name}_init")
    try:
      path = path and train_lib.resolve_init(path)
    except FileNotFoundError:
      path = None
    source[name] = "random"
    if path and os.path.isfile(path):
      module = train_lib.model_module(config[f"{name}_name"])
      params[name] = module.load(jax.device_get(params[name]), path)
      source[name] = f"checkpoint {path}"
  return params, source


def compare_precision(config: mlc.ConfigDict, batch_size: int | None = None) -> dict[str, Any]:
  """bfloat16 against float32 logits of every model of `config` on one batch.

  float32: float32 weights and compute. bfloat16: as train.py runs it, the
  student with float32 weights and bfloat16 compute, teachers with weights
  cast to bfloat16 once. Weights come from the models' checkpoints where the
  config's `*_init` files exist (`weights`), else they are random; images are
  a batch of the config's data where it is prepared (`images`), else
  synthetic. Per model: the relative L2 error of the logits, the largest
  absolute difference, top-1 agreement, the mean KL(float32 || bfloat16) of
  the softmax (how far the distillation target moves), and, as the scale to
  read them against, `sensitivity`: how far float32 logits move when only the
  input images are rounded to bfloat16. Random networks at small resolutions
  are chaotic, so that scale matters (tests/test_bit.py bounds the model's own
  bfloat16 error by it); `within_tolerance` asks rel_l2 <= BF16_RATIO_TOL x
  max(sensitivity, BF16_EPS) for every model.
  """
  models = train_lib.build_models(config)
  which = ("student", *models.teachers)
  batch_size = batch_size or min(config.input.batch_size, 32)
  images, image_source = _precision_inputs(config, models, batch_size)
  rounded = jax.tree.map(lambda x: np.asarray(x.astype(jnp.bfloat16), np.float32), images)
  params, weights = _precision_params(config, models, which)
  bf16 = {k: v if k == "student" else jax.tree.map(lambda x: x.astype(jnp.bfloat16), v)
          for k, v in params.items()}
  predict32 = _predict_fn(config, "float32", which)
  l32, l32_rounded = predict32(params, images), predict32(params, rounded)
  l16 = _predict_fn(config, "bfloat16", which)(bf16, images)
  rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(a))
  out = {"mode": "precision", "device_kind": jax.devices()[0].device_kind, "batch": batch_size,
         "images": image_source, "weights": weights, "ratio_tol": BF16_RATIO_TOL,
         "models": {}}
  for name in which:
    a, b = l32[name], l16[name]
    kl = distill.kl(jnp.asarray(b, jnp.float32), jnp.asarray(a, jnp.float32))
    out["models"][name] = {
        "rel_l2": rel(a, b), "sensitivity": rel(a, l32_rounded[name]),
        "max_abs": float(np.abs(a - b).max()), "logit_std": float(a.std()),
        "top1_agree": float(np.mean(a.argmax(-1) == b.argmax(-1))),
        "kl": float(jnp.mean(kl))}
    m = out["models"][name]
    m["tolerance"] = BF16_RATIO_TOL * max(m["sensitivity"], BF16_EPS)
  out["within_tolerance"] = all(m["rel_l2"] <= m["tolerance"] for m in out["models"].values())
  return out


def main(argv):
  del argv
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError("Give --config=configs/X.py[:args].")
  picked = [m for m, on in (("eval", _EVAL.value), ("input", _INPUT.value),
                            ("precision", _PRECISION.value),
                            ("flops_only", _FLOPS_ONLY.value)) if on]
  if len(picked) > 1:
    raise app.UsageError(f"Choose one of --eval, --input, --precision, --flops_only; got {picked}.")
  mode = picked[0] if picked else "train"
  steps, warmup = _STEPS.value, _WARMUP.value
  try:
    if mode in ("train", "flops_only"):
      out = run_train(config, steps=steps, warmup=warmup, flops_only=mode == "flops_only",
                      lowered_only=_LOWERED_ONLY.value, project_kind=_PROJECT_KIND.value,
                      project_mfu=_PROJECT_MFU.value)
    elif mode == "eval":
      out = run_eval(config, steps=steps, warmup=warmup)
    elif mode == "input":
      config_args = [a for a in sys.argv[1:] if a.startswith("--config")]
      out = run_input(config, config_args, steps=steps, warmup=warmup)
    else:
      out = compare_precision(config)
  except (train_lib.ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
    print(f"big_distill.benchmark: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
  app.run(main)
