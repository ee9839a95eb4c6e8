"""Training with `config.input.cache="device"`: batches made inside the step.

The views themselves are tested against the host ops in test_device_views.py;
here: the trainer runs on them, learns, and resumes exactly.
"""

import json
import os
import shutil

import numpy as np
import pytest

from big_distill import errors
from big_distill import train
from tests import helpers
from tests import tiny_config


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _params(workdir):
  with np.load(os.path.join(workdir, "student.npz"), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


STEPS = 40  # Enough for a training curve to compare with the host pipeline's.


def _config(data_dir, teacher, **kw):
  # The device pipeline implements inception_crop (+ flip_lr) as its random view.
  # The first 100 training images: a balanced subset (subset=100) would read
  # all 60,000 training records in every run and every benchmarked mode; the
  # subset's selection is the host's, before any cache (test_input).
  arg = ",".join([f"data_dir={data_dir}", f"teacher={teacher}", "split=train[:100]", "subset=0",
                  f"steps={STEPS}",
                  f"ckpt={STEPS // 2}", "log=1", "batch=16", "evals=False"]
                 + [f"{k}={v}" for k, v in kw.items()])
  c = tiny_config.get_config(arg)
  c.unlock()
  c.input.pp_random = "inception_crop(24)|flip_lr"
  c.lock()
  return c


@pytest.fixture(scope="module", autouse=True)
def compile_cache(shared_folder):
  """One persistent compilation cache for both xdist workers: the resumed
  run, the refused ones and the benchmark compile what the first run
  compiled, and read it back."""
  with helpers.jax_settings(**helpers.persistent_cache(
      shared_folder("device_cache_jax_cache", lambda path: None))):
    yield


@pytest.fixture(scope="module")
def device_run(shared_folder, fashion_data_dir):
  """The device-cache run, made once per session and shared by both xdist
  workers (each test writes only its own folder beside it)."""
  def build(root):
    shutil.rmtree(root / "run", ignore_errors=True)  # A build that failed midway.
    teacher = tiny_config.write_teacher(root / "teacher.npz")
    train.train(_config(fashion_data_dir, teacher, cache="device"), str(root / "run"))
  root = shared_folder("device_cache_run", build)
  return _config(fashion_data_dir, str(root / "teacher.npz"), cache="device"), root


def test_device_cache_trains_and_logs_every_step(device_run):
  config, root = device_run
  rows = [r for r in _rows(root / "run") if "train/t1_loss" in r]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  loss = [r["train/t1_loss"] for r in rows]
  assert np.all(np.isfinite(loss)) and np.mean(loss[-3:]) < np.mean(loss[:2]), loss
  assert sorted(os.listdir(root / "run" / "checkpoints"), key=int) == [str(STEPS // 2), str(STEPS)]


def test_device_cache_learns_as_the_host_pipeline_does(device_run, fashion_data_dir):
  """The same miniature run fed by the host pipeline (cache='decoded', the same
  view ops run by tf.data): the same curve within its noise. The two draw
  different crops, so the losses match in distribution, not step by step."""
  config, root = device_run
  host = config.copy_and_resolve_references()
  host.input.cache = "decoded"
  train.train(host, str(root / "host"))
  curves = {}
  for name in ("run", "host"):
    curves[name] = np.array([r["train/t1_loss"] for r in _rows(root / name)
                             if "train/t1_loss" in r])
  first, last = slice(0, 5), slice(STEPS // 2, STEPS)
  for name, c in curves.items():  # Both learn: the drop is ~0.3 nats here.
    assert c[last].mean() < c[first].mean() - 0.1, (name, c)
  # The late halves agree within 4 standard errors of their difference (each
  # step's spread around its half's mean, trend included, so conservative).
  d, h = curves["run"][last], curves["host"][last]
  se = np.sqrt(d.var(ddof=1) / d.size + h.var(ddof=1) / h.size)
  assert abs(d.mean() - h.mean()) < 4 * se, (d.mean(), h.mean(), se)


def test_device_cache_resumes_exactly(device_run):
  """A run that lost its later checkpoints (as after a SIGKILL) resumes from
  the middle one and ends bitwise where the uninterrupted run ended."""
  config, root = device_run
  again = root / "resumed"
  shutil.copytree(root / "run", again, ignore=shutil.ignore_patterns("student.npz", "events.*"))
  shutil.rmtree(again / "checkpoints" / str(STEPS))
  with open(again / "metrics.jsonl") as f:
    kept = [line for line in f if json.loads(line)["step"] <= STEPS // 2]
  (again / "metrics.jsonl").write_text("".join(kept))
  train.train(config, str(again))
  a, b = _params(root / "run"), _params(again)
  assert sorted(a) == sorted(b)
  assert all(a[k].tobytes() == b[k].tobytes() for k in a), "resumed run differs"
  strip = lambda rows: {r["step"]: {k: v for k, v in r.items() if not k.startswith("progress/")}
                        for r in rows}
  assert strip(_rows(again)) == strip(_rows(root / "run"))


def test_device_cache_refuses_what_does_not_fit(device_run, fashion_data_dir, tmp_path):
  config, root = device_run
  small = config.copy_and_resolve_references()
  small.input.device_cache_gib = 1e-4  # 100 images of 28x28x3 need ~0.0002 GiB.
  with pytest.raises(errors.ConfigError, match=r"needs 0\.000\d+ GiB.*device_cache_gib=0\.0001"):
    train.train(small, str(tmp_path / "too_big"))
  assert not (tmp_path / "too_big" / "checkpoints").exists()
  bad = config.copy_and_resolve_references()
  bad.input.pp_random = "random_crop(24)|flip_lr"
  with pytest.raises(errors.ConfigError, match="cache='device'"):
    train.train(bad, str(tmp_path / "bad_view"))


def test_benchmark_input_measures_every_cache_mode(device_run):
  from big_distill import benchmark  # pylint: disable=g-import-not-at-top
  config, _ = device_run
  out = benchmark.run_input(config, steps=3, warmup=1,
                            modes=("encoded", "decoded", "device"), demand=1e9)
  assert set(out["cache_modes"]) == {"encoded", "decoded", "device"}
  for mode, r in out["cache_modes"].items():
    assert r["examples_per_s"] > 0, mode
  assert out["cache_modes"]["device"]["host_work_per_step"] == 0
  assert out["cache_modes"]["device"]["recompiles_after_first_call"] == 0
  # 100 images of 28x28x3 uint8 + sizes + labels on the device.
  assert out["cache_modes"]["device"]["device_bytes"] == 100 * (28 * 28 * 3 + 8 + 4)
  assert out["input_bound"] == {"encoded": True, "decoded": True, "device": True}
  assert out["examples_per_s"] == out["cache_modes"]["device"]["examples_per_s"]
