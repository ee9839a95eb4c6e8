"""benchmark.py: its JSON line, the FLOP split, no recompilation, the peak table.

A two-convolution model stands in for BiT here: the benchmark is the same for
any model module, and BiT's smallest network takes minutes to compile on a
shared CPU. bfloat16 numerics of BiT itself are tested in test_bit.py. No
timing figure is asserted: timings are the benchmark's output, not a test.
"""

import json
import sys
import textwrap
import types

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from big_distill import benchmark

TRAIN_KEYS = {
    "device_kind", "device_count", "global_batch", "compile_s", "step_time_s",
    "window_step_time_s", "images_per_s", "images_per_s_per_device", "flops_per_step",
    "flops", "mfu", "peak_flops_per_device", "peak_source", "peak_device_memory_bytes",
    "host_peak_rss_bytes", "planned_device_memory_bytes", "compiles_in_first_call",
    "recompiles_after_first_call"}


class TinyCNN(nn.Module):
  """The model-module interface of models/bit.py, in two convolutions."""
  num_classes: int
  width: int = 8
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, images_BHWC, train: bool = False):
    del train
    conv = lambda f, name: nn.Conv(f, (3, 3), (2, 2), dtype=self.dtype,
                                   param_dtype=jnp.float32, name=name)
    x = nn.relu(conv(self.width, "conv_a")(images_BHWC.astype(self.dtype)))
    x = nn.GroupNorm(num_groups=4, dtype=self.dtype, name="gn")(x)
    x = nn.relu(conv(2 * self.width, "conv_b")(x))
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")(x)
    return logits, {"pre_logits": x}


CONFIG = textwrap.dedent("""
    from big_distill import config_lib

    def get_config(arg=None):
      c = config_lib.base()
      c.num_classes = 5
      c.input.batch_size = 8
      c.student_name = c.t1_name = "tiny_cnn"
      c.student = dict(width=4)
      c.t1 = dict(width=8)
      c.student_res, c.t1_res = 24, 32
      return c
    """)


@pytest.fixture(autouse=True)
def tiny_cnn(monkeypatch):
  # A small matmul measures the CPU's peak well enough for these tests.
  monkeypatch.setattr(benchmark, "CPU_PEAK_MATMUL_SIZE", 512)
  benchmark.device_peak.cache_clear()
  module = types.ModuleType("big_distill.models.tiny_cnn")
  module.Model = TinyCNN
  # Its checkpoint "format": whatever the file holds, the weights plus one.
  module.load = lambda init, path: jax.tree.map(lambda x: x + 1.0, init)
  monkeypatch.setitem(sys.modules, module.__name__, module)
  yield
  benchmark.device_peak.cache_clear()


@pytest.fixture
def config_file(tmp_path):
  path = tmp_path / "tiny_config.py"
  path.write_text(CONFIG)
  return str(path)


@pytest.fixture
def run_cli(capsys, monkeypatch):
  """benchmark's main() with these flags; returns its stdout lines."""
  def reset():
    flags.FLAGS.unparse_flags()
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
      delattr(flags.FLAGS, name)  # Each parse defines the override flags anew.

  def run(*args):
    argv = ["benchmark", *args]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides from it.
    reset()
    try:
      flags.FLAGS(argv)
      benchmark.main([])
    finally:
      reset()
    return capsys.readouterr().out.strip().splitlines()
  return run


def test_train_json_line(run_cli, config_file):
  lines = run_cli(f"--config={config_file}", "--steps=3", "--warmup=1")
  assert len(lines) == 1
  out = json.loads(lines[0])
  assert TRAIN_KEYS <= set(out)
  assert out["global_batch"] == 8 and out["device_count"] >= 1
  for key in ("compile_s", "step_time_s", "window_step_time_s", "images_per_s", "mfu",
              "flops_per_step", "peak_flops_per_device", "planned_device_memory_bytes",
              "host_peak_rss_bytes"):
    assert out[key] > 0, key
  assert out["peak_source"].startswith("measured")  # CPU: a measured matmul.
  # The AOT compile is the one the calls use, and no later step compiles.
  assert out["compiles_in_first_call"] == 0
  assert out["recompiles_after_first_call"] == 0
  # Teachers' forward + student's forward and backward ~ the whole step; the
  # rest (mixup, optimizer, metrics) is small for a convolutional net.
  split = out["flops"]
  assert split["teacher_forward"] > 0 and split["student_forward_backward"] > 0
  parts = split["teacher_forward"] + split["student_forward_backward"]
  assert parts == pytest.approx(out["flops_per_step"], rel=0.1)
  assert split["other"] == pytest.approx(out["flops_per_step"] - parts)


def test_flops_only_lowered_with_projection(run_cli, config_file):
  out = json.loads(run_cli(f"--config={config_file}", "--flops_only", "--lowered_only",
                           "--config.compute_dtype=bfloat16",
                           "--project_device_kind=NVIDIA H100 80GB HBM3")[0])
  assert "step_time_s" not in out and out["compute_dtype"] == "bfloat16"
  assert out["compile_s"] is None and out["flops_per_step"] > 0
  p = out["projection"]
  assert p["mfu"] == 0.45
  assert p["step_time_s"] == pytest.approx(out["flops_per_step"] / (0.45 * 989.4e12))


def test_eval_step(run_cli, config_file):
  out = json.loads(run_cli(f"--config={config_file}", "--eval", "--steps=2",
                           "--warmup=1")[0])
  assert out["mode"] == "eval" and out["step_time_s"] > 0
  assert out["flops"]["teacher_forward"] > out["flops"]["student_forward"] > 0
  assert out["recompiles_after_first_call"] == 0


def test_precision_reports_every_model(run_cli, config_file, tmp_path):
  teacher = tmp_path / "teacher.npz"
  teacher.write_bytes(b"")
  out = json.loads(run_cli(f"--config={config_file}", "--precision",
                           f"--config.t1_init={teacher}")[0])
  # The teacher's checkpoint exists, so its weights are used; the student has none.
  assert out["weights"] == {"student": "random", "t1": f"checkpoint {teacher}"}
  assert out["images"] == "synthetic"  # The config's data set is not prepared.
  assert set(out["models"]) == {"student", "t1"}
  for m in out["models"].values():
    assert 0 < m["rel_l2"] <= m["tolerance"] and 0 < m["sensitivity"] and 0 <= m["kl"]
  assert out["within_tolerance"]


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
  assert benchmark.peak_flops(kind, dtype) == peak


def test_peak_table_unknown():
  assert benchmark.peak_flops("Imaginary XPU 9000", "bfloat16") is None
  assert benchmark.peak_flops("NVIDIA H100 80GB HBM3", "float16") is None
  with pytest.raises(ValueError, match="PEAKS"):
    benchmark.projection(1e12, 8, "bfloat16", "Imaginary XPU 9000", 0.45)
