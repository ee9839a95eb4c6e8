"""benchmark.py: its JSON line, the FLOP split, no recompilation, the peak table.

A two-convolution model stands in for BiT here: the benchmark is the same for
any model module, and BiT's smallest network takes minutes to compile on a
shared CPU. bfloat16 numerics of BiT itself are tested in test_bit.py. No
timing figure is asserted: timings are the benchmark's output, not a test.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from big_distill import benchmark
from big_distill import costs
from big_distill import setup
from tests import helpers

TRAIN_KEYS = {
    "device_kind", "device_count", "global_batch", "compile_s", "step_time_s",
    "window_step_time_s", "images_per_s", "images_per_s_per_device", "flops_per_step",
    "flops", "mfu", "peak_flops_per_device", "peak_source", "peak_device_memory_bytes",
    "host_peak_rss_bytes", "planned_device_memory_bytes", "compiles_in_first_call",
    "recompiles_after_first_call"}


@pytest.fixture(autouse=True)
def tiny_cnn(monkeypatch):
  # A small matmul measures the CPU's peak well enough for these tests.
  monkeypatch.setattr(costs, "CPU_PEAK_MATMUL_SIZE", 512)
  costs.device_peak.cache_clear()
  helpers.install_tiny_cnn(monkeypatch)
  yield
  costs.device_peak.cache_clear()


@pytest.fixture
def config_file(tmp_path):
  path = tmp_path / "tiny_config.py"
  path.write_text(helpers.TINY_CNN_CONFIG)
  return str(path)


@pytest.fixture
def run_cli(capsys, monkeypatch):
  """benchmark's main() with these flags, on flags of its own; returns its stdout lines."""
  def run(*args):
    helpers.run_main(benchmark, ["benchmark", *args], monkeypatch)
    return capsys.readouterr().out.strip().splitlines()
  return run


def test_a_config_the_step_cannot_run_is_one_line(run_cli, config_file, capsys):
  with pytest.raises(SystemExit) as e:
    run_cli(f"--config={config_file}", "--config.distill.views=paper", "--flops_only")
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "big_distill.benchmark: error: config.distill.views='paper'" in err, err
  assert "Traceback" not in err


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


FIXED = ("--config.distill.fixed=cc", "--config.distill.views=fixed", "--config.mixup.p=0",
         "--config.input.cache=encoded")


def test_fixed_teacher_step_beside_function_matching(run_cli, config_file):
  """The fixed-teacher step (precomputed outputs in the batch, no teacher
  forward) is benchmarked like function matching's: same keys, its FLOPs the
  student's share alone."""
  funmatch = json.loads(run_cli(f"--config={config_file}", "--flops_only",
                                "--lowered_only")[0])
  fixed = json.loads(run_cli(f"--config={config_file}", "--flops_only", "--lowered_only",
                             *FIXED)[0])
  assert set(funmatch) == set(fixed)
  assert funmatch["teacher_outputs"] == "forward"
  assert fixed["teacher_outputs"] == "precomputed"
  assert fixed["flops"]["teacher_forward"] == 0.0 < funmatch["flops"]["teacher_forward"]
  assert fixed["flops"]["student_forward_backward"] > 0
  assert 0 < fixed["flops_per_step"] < funmatch["flops_per_step"]


def test_fixed_teacher_step_runs(run_cli, config_file):
  out = json.loads(run_cli(f"--config={config_file}", "--steps=2", "--warmup=1", *FIXED)[0])
  assert TRAIN_KEYS <= set(out)
  assert out["teacher_outputs"] == "precomputed" and out["images_per_s"] > 0
  assert out["recompiles_after_first_call"] == 0


# The child's sitecustomize: tensorflow, tensorflow_datasets and clu cannot be
# imported (as on the accelerator image), and the two-convolution model module
# of tests/helpers.py is installed.
_WITHOUT_TENSORFLOW = textwrap.dedent("""
    import importlib.abc
    import sys
    import types

    class _Absent(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "clu"):
          raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

    sys.meta_path.insert(0, _Absent())
    from tests import helpers
    module = types.ModuleType("big_distill.models.tiny_cnn")
    module.Model = helpers.TinyCNN
    module.freeze = lambda model, variables: (model, variables)
    sys.modules[module.__name__] = module
    """)


def test_step_benchmark_runs_without_tensorflow(tmp_path, config_file):
  """The step on synthetic batches imports no TensorFlow, TFDS or clu (the
  accelerator image has none); `--input` says it is skipped, in one line."""
  site = tmp_path / "site"
  site.mkdir()
  (site / "sitecustomize.py").write_text(_WITHOUT_TENSORFLOW)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), repo]), JAX_PLATFORMS="cpu",
             XLA_FLAGS=helpers.xla_flags(1))
  check = "import tensorflow"
  r = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True)
  assert r.returncode != 0 and "No module named 'tensorflow'" in r.stderr  # The hook works.

  def run(*flags):
    return subprocess.run([sys.executable, "-m", "big_distill.benchmark",
                           f"--config={config_file}", *flags], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
  # The step itself runs without TensorFlow in tests/test_accelerator_check.py
  # (the whole check, as on the device); here the benchmark's own CLI builds it.
  r = run("--flops_only", "--lowered_only")
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["mode"] == "flops_only" and out["flops_per_step"] > 0
  r = run("--input")
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 1 and "--input skipped: tensorflow is not installed" in lines[0], lines


def _load_config(path):
  spec = importlib.util.spec_from_file_location("tiny_cnn_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_flop_split_counts_the_steps_own_loss(config_file, monkeypatch):
  """The student's share is compiled from setup.make_loss itself: a loss that
  costs more (here: the student's forward run twice) shows up in the split."""
  config = _load_config(config_file)
  before = benchmark.flop_split(benchmark.build(config), lowered_only=True)
  make_loss = setup.make_loss

  def doubled(config, models):
    loss = make_loss(config, models)

    def twice(*args):
      total, aux = loss(*args)
      return total + loss(*args)[0], aux
    return twice
  monkeypatch.setattr(setup, "make_loss", doubled)
  after = benchmark.flop_split(benchmark.build(config), lowered_only=True)
  assert after["teacher_forward"] == before["teacher_forward"] > 0
  assert after["student_forward_backward"] > 1.5 * before["student_forward_backward"]


# tiny_config's data and input (Fashion-MNIST) with the two-convolution models:
# what --input times is the input pipeline, and the train step it compares
# with needs no BiT to be timed. Its compiles were most of the test: 77 -> 51
# CPU-s with the Fashion-MNIST fixture's preparation in both (2 vCPU AMD EPYC,
# run beside the old version).
TINY_CNN_ON_FASHION_MNIST = textwrap.dedent("""
    from tests import tiny_config

    def get_config(arg=None):
      c = tiny_config.get_config(arg)
      c.student_name = c.t1_name = "tiny_cnn"
      c.student, c.t1 = dict(width=4), dict(width=8)
      return c
    """)


def test_input_pipeline_is_measured_in_process(run_cli, fashion_data_dir, tmp_path):
  """--input from the command line: --cache_modes picks the modes, and without
  --demand the train step is timed here. One host mode is measured: the other
  modes' measurements are test_device_cache's (run_input with each mode)."""
  path = tmp_path / "tiny_cnn_fashion_mnist.py"
  path.write_text(TINY_CNN_ON_FASHION_MNIST)
  config = f"{path}:data_dir={fashion_data_dir},cache=none"
  out = json.loads(run_cli(f"--config={config}", "--input", "--steps=3", "--warmup=1",
                           "--cache_modes=none")[0])
  assert out["mode"] == "input" and out["data"] == "fashion_mnist"
  assert set(out["cache_modes"]) == {"none"}
  assert out["examples_per_s"] == out["cache_modes"]["none"]["examples_per_s"] > 0
  assert out["step_demand_images_per_s"] > 0
  assert out["step_demand_source"].startswith("train step timed here")
  assert set(out["input_bound"]) == {"none"}


def test_eval_step(run_cli, config_file):
  out = json.loads(run_cli(f"--config={config_file}", "--eval", "--steps=2",
                           "--warmup=1")[0])
  assert out["mode"] == "eval" and out["step_time_s"] > 0
  assert out["flops"]["teacher_forward"] > out["flops"]["student_forward"] > 0
  assert out["recompiles_after_first_call"] == 0
