"""costs.py: the peak table, FLOPs and planned memory of a compiled program,
and step timing with its compile counts (the benchmark's own runs: test_benchmark.py)."""

import jax
import jax.numpy as jnp
import pytest

from big_distill import costs


@pytest.mark.parametrize("kind,dtype,peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4e12),
    ("NVIDIA H100 PCIe", "bfloat16", 756e12),
    ("NVIDIA H200", "float32", 494.7e12),
    ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12),
    ("TPU v5 lite", "bfloat16", 197e12),
    ("TPU v5", "bfloat16", 459e12),
    ("TPU v3", "float32", 61.5e12),
])
def test_peak_table(kind, dtype, peak):
  assert costs.peak_flops(kind, dtype) == peak


def test_peak_table_unknown():
  assert costs.peak_flops("Imaginary XPU 9000", "bfloat16") is None
  assert costs.peak_flops("NVIDIA H100 80GB HBM3", "float16") is None
  with pytest.raises(ValueError, match="PEAKS"):  # A ConfigError: a flag's value.
    costs.projection(1e12, 8, "bfloat16", "Imaginary XPU 9000", 0.45)


def test_flops_and_planned_memory_of_a_matmul():
  """XLA counts 2*m*k*n for an (m, k) x (k, n) matmul, before and after compiling."""
  a = jax.ShapeDtypeStruct((8, 16), jnp.float32)
  b = jax.ShapeDtypeStruct((16, 4), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  assert costs.flops(matmul, a, b) == 2 * 8 * 16 * 4
  assert costs.flops(matmul, a, b, lowered_only=True) == 2 * 8 * 16 * 4
  out = costs.compile_program(matmul, a, b)
  assert out["flops_per_step"] == 2 * 8 * 16 * 4 and out["compile_s"] > 0
  # Arguments and output at least (4 bytes each); XLA may add temporaries.
  assert out["planned_device_memory_bytes"] >= 4 * (8 * 16 + 16 * 4 + 8 * 4)


def test_time_steps_counts_compiles_and_sees_a_recompile():
  """A call that compiles again after the first one is counted: the benchmark's
  `recompiles_after_first_call` must read 0, and it is not blind."""
  step = jax.jit(lambda x: x * 2)
  x = jnp.ones(3)
  out = costs.time_steps(step, lambda a, o: (o,), (x,), steps=2, warmup=1)
  assert out["compiles_in_first_call"] == 1 and out["recompiles_after_first_call"] == 0
  assert 0 < out["step_time_min_s"] <= out["step_time_s"] <= out["step_time_max_s"]
  # The carry hands the step another dtype after the first call: it compiles again.
  x16 = jnp.ones(3, jnp.float16)
  out = costs.time_steps(jax.jit(lambda x: x + 1), lambda a, o: (x16,), (x,), steps=2, warmup=0)
  assert out["recompiles_after_first_call"] == 1


def test_rates_and_projection():
  costs.device_peak.cache_clear()
  out = {"global_batch": 8, "step_time_s": 0.5, "flops_per_step": 1e9}
  costs.rates(out, "float32", cpu_matmul_size=256)  # A small matmul is enough here.
  assert out["images_per_s"] == 16 and "256x256" in out["peak_source"]
  peak = out["peak_flops_per_device"] * jax.device_count()
  assert out["mfu"] == pytest.approx(1e9 / 0.5 / peak)
  costs.device_peak.cache_clear()
  p = costs.projection(1e12, 8, "bfloat16", "NVIDIA H100 80GB HBM3", 0.5)
  assert p["step_time_s"] == pytest.approx(1e12 / (0.5 * 989.4e12))
  assert p["images_per_s"] == pytest.approx(8 / p["step_time_s"])
