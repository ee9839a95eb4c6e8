"""What several test files share: the one random-teacher builder, a tiny model
module, running a command's main() on flags of its own, training runs of the
CLI in subprocesses and what to read from their workdirs, jobs of several
processes, and code run with several CPU devices."""

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path
from unittest import mock

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import optax
import pytest

from big_distill import config_lib
from big_distill import sweep


def xla_flags(devices: int, fast_compile: bool = True) -> str:
  """XLA_FLAGS for a test's subprocess: this session's flags (conftest sets
  the tests' fast-compile flags) with `devices` CPU devices instead of any
  device count they name. `fast_compile=False`: XLA's defaults instead of
  conftest's TEST_XLA_FLAGS, for a test whose numbers are calibrated there or
  that runs more than it compiles."""
  fast = ("--xla_backend_optimization_level", "--xla_cpu_use_fusion_emitters")
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")
          and (fast_compile or not f.startswith(fast))]
  return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def random_bit_params(num_classes: int, *, depth: int = 26, width: float = 0.125,
                      seed: int = 0, head_scale: float = 0.3, bias_scale: float = 2.0,
                      **model_kwargs):
  """Random BiT parameters (numpy), made without compiling anything.

  Kernels ~ N(0, 0.1) (weight standardization makes their scale irrelevant),
  GroupNorm scales ~ 1 + N(0, 0.1), a head kernel ~ N(0, head_scale) (BiT's
  head starts at zeros, which would make a teacher's outputs uniform) and a
  head bias ~ N(0, bias_scale): a class prior far from uniform, something a
  student can visibly learn in a few steps.
  """
  from big_distill.models import bit  # pylint: disable=g-import-not-at-top
  model = bit.Model(num_classes=num_classes, depth=depth, width=width, **model_kwargs)
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    module, name = path[-2].key, path[-1].key
    noise = rng.normal(0, 1, s.shape).astype(np.float32)
    if module == "head":
      return noise * (head_scale if name == "kernel" else bias_scale)
    return 1 + 0.1 * noise if name == "scale" else 0.1 * noise
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def write_random_bit(path, num_classes: int, **kwargs) -> str:
  """`random_bit_params(...)` saved as a BiT `.npz` at `path`; returns the path."""
  from big_distill.models import bit  # pylint: disable=g-import-not-at-top
  bit.save(random_bit_params(num_classes, **kwargs), str(path))
  return str(path)


# ---- A model module in two convolutions --------------------------------------


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


TINY_CNN_CONFIG = textwrap.dedent("""
    from big_distill import config_lib

    def get_config(arg=None):
      c = config_lib.base()
      c.num_classes = 5
      c.input.batch_size = 8
      c.student_name = c.t1_name = "tiny_cnn"
      c.student = dict(width=4)
      c.t1 = dict(width=8)
      c.student_res, c.t1_res = 24, 32
      # Every field a config must set (config_lib.check_required): data the
      # benchmark's synthetic batches stand in for, and a teacher file that
      # its random teachers replace.
      c.input.data.name, c.input.data.split = "tiny_mock", "train"
      c.input.pp_random, c.input.pp_fixed = "inception_crop(32)|flip_lr", "resize(32)"
      c.input.pp_post = "value_range(-1, 1)"
      c.t1_init = "unused: random teachers"
      return c
    """)


def install_tiny_cnn(monkeypatch) -> None:
  """Makes `big_distill.models.tiny_cnn` importable (TinyCNN), for this test."""
  module = types.ModuleType("big_distill.models.tiny_cnn")
  module.Model = TinyCNN
  # Its checkpoint "format": whatever the file holds, the weights plus one.
  module.load = lambda init, path, **_: jax.tree.map(lambda x: x + 1.0, init)
  module.freeze = lambda model, variables: (model, variables)  # Nothing to precompute.
  monkeypatch.setitem(sys.modules, module.__name__, module)


def run_main(command, argv, monkeypatch):
  """`command.main()` after parsing `argv` into flags of its own (`define_flags`)."""
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides from it.
  values = flags.FlagValues()
  monkeypatch.setattr(flags, "FLAGS", values)
  command.define_flags(values)
  values(argv)
  return command.main([])


# ---- A fake run's metrics.jsonl (test_metrics, test_plot) ------------------------


def write_run(path, epochs, teacher=0.89, evals=("test", "val"), extra_lines=(),
              epoch_key="epoch"):
  """A fake metrics.jsonl: 10 steps an epoch, evals every 5 epochs, killed mid-line."""
  path.mkdir(parents=True)
  with open(path / "metrics.jsonl", "w") as f:
    for step in range(10, epochs * 10 + 1, 10):
      epoch = step / 10
      f.write(json.dumps({"step": step, epoch_key: epoch, "train/loss": 2.0 / epoch,
                          "train/lr": 0.003}) + "\n")
      if step % 50 == 0:
        row = {"step": step, epoch_key: epoch}
        for i, ev in enumerate(evals):
          row.update({f"{ev}/student_top1": 0.8 * epoch / epochs - 0.01 * i,
                      f"{ev}/t1_top1": teacher - 0.01 * i,
                      f"{ev}/t1_kl": 1.0 / epoch, f"{ev}/t1_agree_top1": 0.9 * epoch / epochs})
        f.write(json.dumps(row) + "\n")
    for line in extra_lines:
      f.write(line + "\n")
    f.write('{"step": 999, "epoch": 99.9, "train/lo')  # No newline: killed here.


# ---- Training runs through the CLI (test_reliability, test_cluster, test_precompute) ----

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "tests" / "tiny_config.py")
STEPS, CKPT = 16, 3  # Checkpoints at 3, 6, ..., 15 and 16 (orbax keeps the newest 3).
# How far a 2-process job and a 1-process job of as many devices part
# (tests/test_multiprocess.py). Measured: 1e-7 relative, 1.5e-8 absolute;
# at the tests' -O0 on a 2 vCPU AMD EPYC, within 2e-7 of RTOL's scale.
MULTIPROCESS_RTOL, MULTIPROCESS_ATOL = 1e-4, 1e-6
# The run on 4 devices that the 2-process job (test_multiprocess) and the
# resumes on 2 and 8 devices (test_cluster) are compared with: conftest's
# `four_device_run`. At 64px with plain SGD a device count or process count
# moves the result by float rounding only (test_multiprocess's docstring says
# why). All of these runs use the tests' -O0, as every test (conftest): on a 2
# vCPU AMD EPYC that cost 330 CPU-s for the 4-device run, both 2-process jobs
# and both resumes, against 507 at XLA's default level, and the 2-process jobs
# agreed closer there (bfloat16 momentum: relative L2 1.2e-3 at -O0, up to
# 8.7e-3 at the default level; float32: 2e-7 against 1e-5 of RTOL's scale).
# The same run on 2 processes x 2 devices (conftest's `two_process_run`) is
# also test_cluster's uninterrupted 2-process job, which a job killed after its
# first checkpoint and then resumed must equal bitwise; a checkpoint every step
# leaves that kill 3 steps and saves before the end (8 steps would leave more,
# but the 2 jobs part by float rounding as they go: measured, up to 4e-3
# relative at steps 6-8, against 4e-7 over 4 steps). Checkpoints at 1, 2, 3
# and 4 (orbax keeps the newest 3).
FOUR_DEVICE_ARG = dict(steps=4, ckpt=1, res=64, teacher_res=64, optim="sgd",
                       replica_parallel=1)  # The trainer's default saving.


def run_arg(data_dir, teacher, **changes):
  args = dict(data_dir=data_dir, teacher=teacher, steps=STEPS, ckpt=CKPT, log=1,
              evals="false", subset=0, split="train[:160]")  # 10 steps an epoch.
  args.update(changes)
  return ",".join(f"{k}={v}" for k, v in args.items())


def make_config(arg, **fields):
  """tests/tiny_config.py's config of `arg` (run_arg), with `fields` ("a.b": value) set."""
  from tests import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config.get_config(arg)
  for path, value in fields.items():
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  return config


# ---- The CLI in a subprocess ------------------------------------------------


class Cli:
  """`python -m big_distill.train` started in the background; output in a file."""

  def __init__(self, workdir, arg, *flags, log, cache, devices=1, env=None,
               fast_compile=True):
    """`cache`: the persistent compilation cache's folder; None: none (not
    even the caller's $JAX_COMPILATION_CACHE_DIR)."""
    self.log, self.workdir = Path(log), Path(workdir)
    changes = env or {}
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices, fast_compile),
               PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    # No job of the caller's (a multi-process job passes its own flags).
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                 "JAX_COMPILATION_CACHE_DIR"):
      env.pop(name, None)
    if cache is not None:
      env.update(JAX_COMPILATION_CACHE_DIR=str(cache),
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    env.update(changes)
    cmd = [sys.executable, "-m", "big_distill.train", f"--config={CONFIG}:{arg}",
           f"--workdir={workdir}", *flags]
    with open(self.log, "w") as f:
      self.proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                   cwd=REPO)

  def wait(self, timeout=600) -> int:
    return self.proc.wait(timeout=timeout)

  @property
  def output(self) -> str:
    return self.log.read_text(errors="replace")

  def tail(self, n=4000) -> str:
    return self.output[-n:]


def run_to_end(workdir, arg, *flags, log, cache, **kwargs) -> tuple[int, str]:
  cli = Cli(workdir, arg, *flags, log=log, cache=cache, **kwargs)
  try:
    return cli.wait(), cli.output
  finally:
    if cli.proc.poll() is None:
      cli.proc.kill()


def finished_steps(workdir) -> list[int]:
  """Steps of the finished checkpoints (orbax renames a save's tmp dir when done)."""
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def unfinished_saves(workdir) -> list[str]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(n for n in os.listdir(d) if not n.isdigit()) if os.path.isdir(d) else []


def wait_first_checkpoint(cli: Cli, timeout=600) -> float:
  """Polls the workdir for the first finished checkpoint; returns when it appeared."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if finished_steps(cli.workdir):
      return time.monotonic()
    if cli.proc.poll() is not None:
      pytest.fail(f"The run exited ({cli.proc.returncode}) before its first checkpoint:\n"
                  + cli.tail())
    time.sleep(0.02)
  cli.proc.kill()
  pytest.fail("No checkpoint after %d s:\n%s" % (timeout, cli.tail()))


def resumed_step(output) -> int | None:
  m = re.search(r"Resumed from the checkpoint at step (\d+)", output)
  return int(m[1]) if m else None


def read_params(workdir) -> dict[str, np.ndarray]:
  with np.load(os.path.join(workdir, "student.npz"), allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def params_differences(a, b) -> list[str]:
  """Arrays that are not bitwise equal (an empty list when all are)."""
  if sorted(a) != sorted(b):
    return [f"keys differ: {sorted(set(a) ^ set(b))[:5]}"]
  return [k for k in sorted(a)
          if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
          or a[k].tobytes() != b[k].tobytes()]


def train_rows(workdir) -> dict[int, dict]:
  """metrics.jsonl by step, without the progress/* timings; one row per step."""
  rows = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      step = row.pop("step")
      assert step not in rows, f"step {step} logged twice in {workdir}/metrics.jsonl"
      rows[step] = {k: v for k, v in row.items() if not k.startswith("progress/")}
  return rows


def snapshot(root) -> dict[str, str]:
  """Every file under `root` with its content hash."""
  out = {}
  for path in sorted(Path(root).rglob("*")):
    if path.is_file():
      out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


class Reference:
  """The uninterrupted run every interrupted one is compared with."""

  def __init__(self, path, data_dir):
    info = json.loads((path / "reference.json").read_text())
    self.teacher = info["teacher"]
    self.arg = run_arg(data_dir, self.teacher)
    self.workdir = path / "run"
    self.params = read_params(self.workdir)
    self.rows = train_rows(self.workdir)


def assert_same_as_reference(ref: Reference, workdir, what: str) -> None:
  diff = params_differences(ref.params, read_params(workdir))
  assert not diff, f"{what}: student.npz differs from the uninterrupted run in {diff[:5]}"
  rows = train_rows(workdir)
  assert sorted(rows) == sorted(ref.rows), f"{what}: logged steps {sorted(rows)}"
  bad = [s for s in rows if rows[s] != ref.rows[s]]
  assert not bad, (f"{what}: metrics differ at steps {bad}, e.g. step {bad[0]}: "
                   f"{rows[bad[0]]} vs {ref.rows[bad[0]]}")


class ReachedExpensiveWork(Exception):
  pass


def tripwire(what):
  def fail(*args, **kwargs):
    del args, kwargs
    raise ReachedExpensiveWork(f"reached {what}: the error was not raised before it")
  return fail


def existing_run(workdir, config) -> Path:
  """A workdir holding an earlier run of `config`: config.json, metrics, a checkpoint."""
  workdir.mkdir(parents=True)
  # As train.check_workdir writes it, so that rewriting it changes no byte.
  resolved = json.loads(config.to_json_best_effort())
  (workdir / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
  (workdir / "metrics.jsonl").write_text(json.dumps({"step": 3, "train/loss": 1.5}) + "\n")
  (workdir / "checkpoints" / "3").mkdir(parents=True)
  (workdir / "checkpoints" / "3" / "state").write_bytes(b"earlier state")
  return workdir



# ---- Jobs of several processes ----------------------------------------------


class JobFailed(AssertionError):
  """A job exited non-zero or timed out (all jobs are killed then)."""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def read_log(log, tail=None):
  try:
    text = Path(log).read_text(errors="replace")
  except OSError as e:
    return f"<{e}>"
  return text[-tail:] if tail else text


def two_process_job(workdir, arg, *flags, tag, folder, env=None) -> list[Cli]:
  """The 2 processes (2 CPU devices each) of one jax.distributed job of the
  CLI over gloo, started; their logs are `folder`/`tag`.{0,1}.log.

  Without a persistent compilation cache: one shared with another job (or
  the caller's $JAX_COMPILATION_CACHE_DIR) can fail such a job, and a job's
  own cache would serve no other job. A cache can only ever serve process 0:
  the CPU backend's cache key hashes the topology of the process's own
  devices, so the two processes' keys for one program differ, and JAX writes
  entries from process 0 alone. Measured (jax 0.10.2, 2 vCPU
  AMD EPYC): a second job over a first one's cache, process 0 found all its
  56 programs, process 1 none. Where one process finds its executables and
  the other compiles (the train step: 16-35 s here), the first waits at the
  gloo communicators' key exchange past gloo's 30 s timeout: the job fails
  (seen under load with one cache for all jobs). So every job compiles
  everything, in both processes.
  """
  port = free_port()
  env = {"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo", **(env or {})}
  return [Cli(workdir, arg, *flags, f"--coordinator_address=localhost:{port}",
              "--num_processes=2", f"--process_id={i}", log=Path(folder) / f"{tag}.{i}.log",
              cache=None, devices=2, env=env) for i in range(2)]


def finish_job(job: list[Cli], timeout=900) -> None:
  """Waits for every process of `job` to exit 0; kills them all on a failure,
  a timeout or an interrupt (JobFailed names each process's exit and log)."""
  try:
    wait_all([(f"process {i} of {len(job)}", cli.proc, cli.log)
              for i, cli in enumerate(job)], timeout)
  finally:
    for cli in job:
      if cli.proc.poll() is None:
        cli.proc.kill()
        cli.proc.wait()


def wait_all(jobs, timeout):
  """Waits for every (name, Popen, log); on a failure or timeout kills them all."""
  deadline = time.monotonic() + timeout
  failed = None
  while failed is None and any(p.poll() is None for _, p, _ in jobs):
    for name, p, _ in jobs:
      if p.poll() not in (None, 0):
        failed = f"{name} exited with {p.returncode}"
    if time.monotonic() > deadline:
      failed = f"timeout after {timeout}s"
    time.sleep(0.5)
  if failed is None and any(p.returncode != 0 for _, p, _ in jobs):
    failed = "a job failed"
  if failed:
    for _, p, _ in jobs:
      if p.poll() is None:
        p.kill()
    for _, p, _ in jobs:
      p.wait()
    report = "\n".join(f"===== {name} (exit {p.returncode}), log tail:\n{read_log(log, 3000)}"
                       for name, p, log in jobs)
    raise JobFailed(f"{failed}\n{report}")



# ---- Several CPU devices --------------------------------------------------------


def run_with_devices(n: int, code: str) -> dict:
  """Runs `code` with n CPU devices; it prints one JSON object as its last line."""
  env = dict(os.environ, XLA_FLAGS=xla_flags(n),
             PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
  r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


# ---- Shared by test_shampoo and test_optim ------------------------------

def conv_tree():
  """A tiny conv net's parameters (test_shampoo, test_optim)."""
  rng = np.random.default_rng(3)
  f = lambda *s: jnp.asarray(rng.normal(size=s) * 0.3, jnp.float32)
  return {"conv": {"kernel": f(3, 3, 2, 4)},
          "gn": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))},
          "head": {"kernel": f(4, 3), "bias": jnp.zeros((3,))}}


def conv_loss(params):
  """Its loss on fixed data: every parameter has a gradient."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(8, 5, 5, 2)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, size=8))
  h = jax.lax.conv_general_dilated(x, params["conv"]["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jax.nn.relu(h * params["gn"]["scale"] + params["gn"]["bias"]).mean((1, 2))
  logits = h @ params["head"]["kernel"] + params["head"]["bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# ---- Shared by test_sweep and test_replicate ------------------------------

def sweep_cell(root, fields, rows, done=True, wall=10.0):
  """A finished (or `done=False`: killed) sweep cell under `root` with these metric rows."""
  cell = sweep.Cell("cfg.py", fields, {}, sorted(fields))
  wd = root / cell.name
  wd.mkdir(parents=True)
  (wd / sweep.CELL_FILE).write_text(json.dumps(
      {"name": cell.name, "args": fields, "overrides": {}, "swept": sorted(fields),
       "command": f"python -m big_distill.train --workdir={wd}", "wall_s": wall,
       "device": "cpu x1"}))
  with open(wd / "metrics.jsonl", "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
    f.write('{"step": 99, "val/stu')  # A killed run's torn line.
  if done:
    (wd / "student.npz").write_bytes(b"x")
  return wd
# ---- The paper configs' tests (test_configs, test_mobilenet_train) ------------
# Mock TFDS data over the real split sizes, random BiT checkpoints, cheaper
# compiles, and the configs loaded by path.




REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# TFDS split sizes (the TFDS catalog), independent of configs/.
SPLITS = {
    "oxford_flowers102": dict(train=1020, validation=1020, test=6149),
    "oxford_iiit_pet": dict(train=3680, test=3669),
    "food101": dict(train=75750, validation=25250),
    "sun397": dict(train=76128, validation=10875, test=21750),
    "imagenet2012": dict(train=1281167, validation=50000, test=100000),
}
MOCK_EXAMPLES = 16


def get_config(name, arg=None):
  """configs/<name>.py's config (`teachers.pets`: configs/teachers/pets.py), loaded by
  its path as the commands load it; unlocked, for tests that change it."""
  path = os.path.join(REPO, "configs", *name.split(".")) + ".py"
  return config_lib.load_config(path + (f":{arg}" if arg is not None else ""), lock=False)


def write_metadata(root):
  """Makes `root` a data_dir holding only metadata: the real split sizes."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (see TINY_CNN_CONFIG)
  for name, splits in SPLITS.items():
    builder = tfds.builder(name, data_dir=str(root))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(
            name=split, shard_lengths=[n], num_bytes=0,
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=builder.data_path, dataset_name=builder.name, split=split,
                filetype_suffix="tfrecord"))
        for split, n in splits.items()]))
    builder.info.write_to_directory(builder.data_dir)
  return str(root)


@pytest.fixture(scope="module")
def tfds_metadata(tmp_path_factory):
  return write_metadata(tmp_path_factory.mktemp("tfds_metadata"))


class _NoFakeFs:
  """Stands in for TFDS's fake file system (see `mock_data`)."""

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    return False

  def add_file(self, path, content=None):
    del path, content


@contextlib.contextmanager
def mock_data(metadata_dir):
  """TFDS mock data over `metadata_dir`, without TFDS's fake file system.

  mock_data swaps in a fake file system while a data set is opened, for
  data_dirs that do not exist; ours does. Left in, the fake would also catch
  the files that orbax writes from its thread while an evaluation starts.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with mock.patch("tensorflow_datasets.testing.test_utils.MockFs", _NoFakeFs), \
       tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, data_dir=metadata_dir):
    yield


def write_checkpoint(model_kwargs, num_classes, path):
  """A random BiT `.npz` (nonzero head), made without compiling anything."""
  return write_random_bit(path, num_classes, **model_kwargs)


@contextlib.contextmanager
def jax_settings(**settings):
  """jax.config `settings` (and a fresh compilation cache) inside, restored after."""
  old = {k: jax.config.values[k] for k in settings}
  for k, v in settings.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    for k, v in old.items():
      jax.config.update(k, v)
    compilation_cache.reset_cache()


def persistent_cache(directory) -> dict:
  """jax.config settings that keep every compiled program in `directory`: a
  program compiled again (an evaluator's step for another split, a resumed
  run's train step) is then read back instead of compiled."""
  return {"jax_compilation_cache_dir": str(directory),
          "jax_persistent_cache_min_compile_time_secs": 0.0,
          "jax_persistent_cache_min_entry_size_bytes": -1}


@pytest.fixture(scope="module", autouse=True)
def fast_compiles(tmp_path_factory):
  """Makes compiling, which is most of a runlocal run's time, cheaper here.

  The evaluators of one run compile the same step for different splits: the
  persistent cache turns the repeats into cache hits. The 'unsafe_rbg' PRNG
  makes the models' initialization cheaper to compile, and 3 steps do not
  repay XLA's optimizations (they halve the compile time). All is restored
  afterwards, for the other test modules of this process.
  """
  with jax_settings(**persistent_cache(tmp_path_factory.mktemp("jax_cache")),
                    jax_default_prng_impl="unsafe_rbg",
                    jax_disable_most_optimizations=True):
    yield


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  last = {}
  for row in rows:
    last.update(row)
  return rows, last


def eval_metrics(config, ec) -> list[str]:
  """The metrics that an evaluator `ec` (of config.evals) reports for `config`'s models."""
  models = ("student", *config.teachers)
  if ec.type != "distance" and ec.get("models", "all") != "all":  # E.g. "student".
    models = tuple(m.strip() for m in ec.models.split(","))
  return {
      "classification": [f"{m}_{k}" for m in models for k in ("top1", "top5", "loss")],
      "distance": [f"{t}_{k}" for t in config.teachers
                   for k in ("kl", "euclidean", "agree_top1", "agree_top5")],
      "calibration": [f"{m}_{k}" for m in models for k in ("ece", "confidence")],
  }[ec.type]


def with_random_checkpoints(config, folder, student_init_classes=None):
  """`config` with random BiT files (nonzero heads) for its teachers, shaped as
  its teachers; without teachers and with `student_init_classes`, a student
  start of that many classes (a BiT-M stand-in: 21,843). Returns `config`."""
  for t in config.teachers:
    config[f"{t}_init"] = write_checkpoint(config[t].to_dict(), config.num_classes,
                                           Path(folder) / f"{t}.npz")
  if not config.teachers and student_init_classes:
    config.student_init = write_checkpoint(config.student.to_dict(), student_init_classes,
                                           Path(folder) / "student_init.npz")
  return config


def trace_training(config) -> types.SimpleNamespace:
  """What `train.train(config, ...)` checks, loads and reads before its first
  compile, and the shapes of what its programs compute, traced, never compiled.

  The config's checks, its data (prepared, the config's classes), its models,
  the teachers' and the student start's files loaded into them, the set-up,
  the first training batch of its input pipeline and every evaluator's data
  set; then `jax.eval_shape` of the train step on that batch and every
  evaluator run with a step of `eval_shape` (ones of its sums' shapes), so
  its metric names are the real `Evaluator.run`'s. Call it inside the data's
  context (`mock_data`). Returns models, setup, batch (ShapeDtypeStructs),
  state (the step's new state), metrics (the train step's, by name) and evals
  ({evaluator: its metrics' names}).
  """
  from big_distill import checks, feeding, model_set, plan, setup, weights  # pylint: disable=g-import-not-at-top
  checks.check_config(config)
  models = model_set.build_models(config)
  checks.check_data(config)
  checks.check_inits(config)
  mesh = plan.make_mesh(config)
  d = plan.durations(config)
  s = setup.build(config, models, mesh, total_steps=d.total, warmup_steps=d.warmup)
  teachers = weights.load_teachers(config, models, mesh)
  if config.student_init:  # load_student_init's load, into zeros (its template compiles).
    start = weights.load_weights(
        config, "student", models.student, config.student_init,
        template=weights.zeros_template(models.student, models.res["student"]))
    assert (jax.tree.map(lambda x: (x.shape, x.dtype), start)
            == jax.tree.map(lambda x: (x.shape, x.dtype), s.state["variables"])), (
                "the student start does not fit the student")
  data = feeding.prepare_train_data(config, mesh)
  batch = next(feeding.train_batches(config, mesh, 0, data))
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  state, metrics = jax.eval_shape(s.train_step, s.state, teachers, batch)
  evals = {}
  for e in feeding.make_evaluators(config, models, mesh):
    step = e._step  # pylint: disable=protected-access

    def shape_only(student, teacher_params, b, which, step=step):
      sums = jax.eval_shape(lambda st, tp, bb: step(st, tp, bb, which), student,
                            teacher_params, b)
      return jax.tree.map(lambda x: np.ones(x.shape, x.dtype), sums)
    e._step = shape_only  # pylint: disable=protected-access
    evals[e.name] = set(e.run(s.state["variables"], teachers))
  return types.SimpleNamespace(models=models, setup=s, batch=batch, state=state,
                               metrics=metrics, evals=evals)
