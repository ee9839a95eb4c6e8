"""What a compiled step costs: FLOPs, planned memory, compile and step times,
and the device's peak FLOP/s that turn them into MFU.

The measuring half of `python -m big_distill.benchmark` (which builds the
steps); `accelerator_check` and tests use it too. Every figure is per call of
one jitted function; see `time_steps` for how a step time is taken.
"""

from __future__ import annotations

import functools
import math
import resource
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from big_distill import errors

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
def device_peak(dtype: str, cpu_matmul_size: int | None = None) -> tuple[float | None, str]:
  """(peak FLOP/s per device, where it comes from) for the first device.

  On a CPU the peak is measured on a `cpu_matmul_size`-square matmul (default
  CPU_PEAK_MATMUL_SIZE); on an accelerator it is the datasheet's (PEAKS).
  """
  device = jax.devices()[0]
  if device.platform == "cpu":
    n = cpu_matmul_size or CPU_PEAK_MATMUL_SIZE
    return measure_matmul_peak(dtype, n), f"measured: {n}x{n} {dtype} matmul on this CPU"
  peak = peak_flops(device.device_kind, dtype)
  return peak, ("datasheet table costs.PEAKS" if peak else
                f"unknown device kind {device.device_kind!r}: add it to big_distill/costs.py PEAKS")



# ---------------------------------------------------------------------------
# FLOPs and memory of a compiled program.
# ---------------------------------------------------------------------------


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


def compile_program(jitted, *args, lowered_only: bool = False) -> dict[str, Any]:
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


def memory() -> dict[str, Any]:
  stats = jax.devices()[0].memory_stats()
  return {
      "peak_device_memory_bytes": (stats or {}).get("peak_bytes_in_use"),
      # CPU devices have no memory stats: the process's peak resident set
      # (host RAM, all devices and the Python process together) stands in.
      "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
  }


def rates(out: dict[str, Any], dtype: str, cpu_matmul_size: int | None = None) -> None:
  """Images/s and MFU into `out` (from its global_batch, step_time_s, flops_per_step)."""
  n = jax.device_count()
  peak, source = device_peak(dtype, cpu_matmul_size)
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
                     "big_distill/costs.py PEAKS.")
  step = flops_per_step / (mfu * peak)
  return {"device_kind": device_kind, "mfu": mfu, "peak_flops": peak, "step_time_s": step,
          "images_per_s": batch_size / step, "note": "projection, not a measurement"}
