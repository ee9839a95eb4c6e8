"""Shared fixtures: small prepared data sets, built once per test session.

Under pytest-xdist the workers share one folder (guarded by a file lock), so a
data set is prepared once, not once per worker.
"""

import fcntl
import json
import os
import shutil
import subprocess
import types

import numpy as np
import pytest

# The tests compile far more than they run. Two XLA:CPU flags make compiling
# cheaper: LLVM -O0 (~35% faster compiles, the demo's three runs: 70 s of
# compiling -> 45 s; ~40% slower runs) and the older elemental emitters in
# place of the fusion emitters (a train step at -O0: 15.7 -> 5.4 CPU-s, 2 vCPU
# AMD EPYC). Both change how XLA emits CPU code, not what a program computes.
# Set here, before any backend starts, so this process and (through
# `helpers.xla_flags`) every subprocess a test starts use them. Real runs and
# benchmarks keep XLA's defaults. A flag already in the caller's XLA_FLAGS wins.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
for _flag in TEST_XLA_FLAGS:
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

FOLDER_NAME = "bd_test_images"  # TFDS name of the image-folder fixture.
FOLDER_SPLITS = {"train": 24, "test": 23}
FOLDER_CLASSES = ("cat", "dog", "owl")


def _shared(tmp_path_factory, name, build):
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  path = root / name
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (path / "done").exists():
      path.mkdir(exist_ok=True)
      build(path)
      (path / "done").touch()
  return path


def folder_image_id(pixel_value):
  """Inverse of the id coding of the folder fixture (channel 0 = 10 * id + 5)."""
  return np.round((np.asarray(pixel_value) - 5) / 10).astype(int)


def _write_images(root):
  """Smooth random 48x40 PNGs; channel 0 is constant and codes the example id."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, n in FOLDER_SPLITS.items():
    for i in range(n):
      cls = FOLDER_CLASSES[i % len(FOLDER_CLASSES)]
      (root / split / cls).mkdir(parents=True, exist_ok=True)
      smooth = tf.image.resize(rng.uniform(0, 255, (4, 4, 2)), (48, 40), "bicubic")
      image = np.concatenate([np.full((48, 40, 1), 10 * i + 5.0), smooth.numpy()], -1)
      png = tf.io.encode_png(np.clip(image, 0, 255).astype(np.uint8))
      tf.io.write_file(str(root / split / cls / f"{i:03d}.png"), png)


@pytest.fixture(scope="session")
def folder_data_dir(tmp_path_factory):
  """data_dir holding the TFDS data set FOLDER_NAME, made by prepare.folder."""
  def build(path):
    from big_distill.data import prepare  # pylint: disable=g-import-not-at-top
    _write_images(path / "images")
    prepare.prepare_folder(str(path / "images"), FOLDER_NAME, str(path / "tfds"))
  return str(_shared(tmp_path_factory, "folder", build) / "tfds")


@pytest.fixture(scope="session")
def fashion_data_dir(tmp_path_factory):
  """data_dir with fashion_mnist prepared from the Debian package's files."""
  from big_distill.data import prepare  # pylint: disable=g-import-not-at-top
  files = [os.path.join(prepare.FASHION_MNIST_DIR, f) for f in prepare.FASHION_MNIST_FILES]
  if not all(map(os.path.exists, files)):
    pytest.skip(f"Debian package {prepare.FASHION_MNIST_PACKAGE} is not installed "
                f"(no {prepare.FASHION_MNIST_DIR}); apt-get install -y "
                f"{prepare.FASHION_MNIST_PACKAGE}")
  path = _shared(tmp_path_factory, "fashion",
                 lambda p: prepare.prepare_fashion_mnist(str(p)))
  return str(path)


@pytest.fixture
def small_config():
  """A base config shrunk for CPU tests; call it with the data set."""
  def make(name, data_dir=None, split="train", **input_fields):
    from big_distill import config_lib  # pylint: disable=g-import-not-at-top
    c = config_lib.base()
    c.input.data.name, c.input.data.split, c.input.data.data_dir = name, split, data_dir
    c.input.batch_size = 6
    c.input.shuffle_buffer_size = 8
    c.input.pp_random = "inception_crop(32)|flip_lr"
    c.input.pp_fixed = "resize_small(36)|central_crop(32)"
    c.input.pp_post = "value_range(0, 255)"
    c.student_res, c.t1_res = 16, 32
    c.input.update(input_fields)
    return c
  return make


@pytest.fixture(scope="session")
def shared_folder(tmp_path_factory):
  """make(name, build) -> a folder that every xdist worker of the session
  shares, filled once by build(path) (under a file lock)."""
  return lambda name, build: _shared(tmp_path_factory, name, build)


# ---- Training runs shared by the CLI tests (tests/helpers.py runs them) ----------


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
  """One persistent compilation cache for every subprocess of the session."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  return str(_shared(tmp_path_factory, "reliability_jax_cache", lambda p: None))


@pytest.fixture(scope="session")
def reference(tmp_path_factory, fashion_data_dir, jax_cache):
  """The uninterrupted CLI run (helpers.STEPS steps) every interrupted one is compared with."""
  from tests import helpers, tiny_config  # pylint: disable=g-import-not-at-top

  def build(path):
    shutil.rmtree(path / "run", ignore_errors=True)
    teacher = tiny_config.write_teacher(path / "teacher.npz")
    cli = helpers.Cli(path / "run", helpers.run_arg(fashion_data_dir, teacher),
                      log=path / "run.log", cache=jax_cache)
    rc = cli.wait()
    assert rc == 0, cli.tail()
    (path / "reference.json").write_text(json.dumps({"teacher": teacher}))
  ref = helpers.Reference(_shared(tmp_path_factory, "reliability_reference", build),
                          fashion_data_dir)
  assert sorted(ref.rows) == list(range(1, helpers.STEPS + 1))
  assert helpers.finished_steps(ref.workdir) == [12, 15, 16]
  return ref


@pytest.fixture(scope="session")
def four_device_teacher(tmp_path_factory):
  """The random teacher of helpers.FOUR_DEVICE_ARG's runs (a file's path)."""
  from tests import tiny_config  # pylint: disable=g-import-not-at-top
  path = _shared(tmp_path_factory, "four_device_teacher",
                 lambda p: tiny_config.write_teacher(p / "teacher.npz"))
  return str(path / "teacher.npz")


@pytest.fixture(scope="session")
def four_device_arg(fashion_data_dir, four_device_teacher):
  """tests/tiny_config.py's arg of helpers.FOUR_DEVICE_ARG's runs (four_device_run,
  two_process_run)."""
  from tests import helpers  # pylint: disable=g-import-not-at-top
  return helpers.run_arg(fashion_data_dir, four_device_teacher, **helpers.FOUR_DEVICE_ARG)


@pytest.fixture(scope="session")
def four_device_run(tmp_path_factory, four_device_arg, four_device_teacher, jax_cache):
  """1 process x 4 devices, helpers.FOUR_DEVICE_ARG, default mesh (data=4),
  the tests' -O0 (TEST_XLA_FLAGS): the run that test_multiprocess's 2-process
  jobs and test_cluster's resumes on 2 and 8 devices are compared with, all at
  -O0 (helpers.FOUR_DEVICE_ARG's comment says why).
  Read-only: copy it before resuming it."""
  from tests import helpers  # pylint: disable=g-import-not-at-top

  def build(path):
    shutil.rmtree(path / "run", ignore_errors=True)
    cli = helpers.Cli(path / "run", four_device_arg, log=path / "run.log", cache=jax_cache,
                      devices=4)
    rc = cli.wait()
    assert rc == 0, cli.tail()
  path = _shared(tmp_path_factory, "four_device_run", build)
  return types.SimpleNamespace(workdir=path / "run", log=path / "run.log", arg=four_device_arg,
                               teacher=four_device_teacher)


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory, four_device_arg, four_device_teacher):
  """four_device_run's very run (the same arg) as a job of 2 processes x 2
  devices (helpers.two_process_job: jax.distributed over gloo), uninterrupted.
  test_multiprocess compares it with four_device_run; test_cluster's
  killed-process test resumes a cut job of it, which must equal it bitwise.
  One job for both: each 2-process job compiles everything in both of its
  processes (helpers.two_process_job says why). Read-only."""
  from tests import helpers  # pylint: disable=g-import-not-at-top

  def build(path):
    shutil.rmtree(path / "run", ignore_errors=True)
    helpers.finish_job(helpers.two_process_job(path / "run", four_device_arg, tag="run",
                                               folder=path))
  path = _shared(tmp_path_factory, "two_process_run", build)
  return types.SimpleNamespace(workdir=path / "run", arg=four_device_arg,
                               teacher=four_device_teacher,
                               logs=[path / f"run.{i}.log" for i in range(2)])


@pytest.fixture
def small_disk(tmp_path):
  """mount(size_bytes) -> a tmpfs of that size; mount(size, remount=True) resizes it."""
  mount = tmp_path / "disk"
  mount.mkdir()
  state = {"mounted": False}

  def do(size, remount=False):
    opts = f"{'remount,' if remount else ''}size={size}"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mount)],
                       capture_output=True, text=True, check=False)
    if r.returncode and not remount:
      pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    state["mounted"] = True
    return mount

  yield do
  if state["mounted"]:
    subprocess.run(["umount", "-l", str(mount)], check=False)
