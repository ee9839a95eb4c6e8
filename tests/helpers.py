"""What several test files share: the one random-teacher builder, a tiny model
module, and running a command's main() on flags of its own."""

import os
import sys
import textwrap
import types

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def xla_flags(devices: int, fast_compile: bool = True) -> str:
  """XLA_FLAGS for a test's subprocess: this session's flags (conftest sets
  the tests' -O0) with `devices` CPU devices instead of any device count they
  name. `fast_compile=False`: XLA's default optimization level instead, for a
  test whose numbers are calibrated there or that runs more than it compiles."""
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")
          and (fast_compile or not f.startswith("--xla_backend_optimization_level"))]
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
      return c
    """)


def install_tiny_cnn(monkeypatch) -> None:
  """Makes `big_distill.models.tiny_cnn` importable (TinyCNN), for this test."""
  module = types.ModuleType("big_distill.models.tiny_cnn")
  module.Model = TinyCNN
  # Its checkpoint "format": whatever the file holds, the weights plus one.
  module.load = lambda init, path: jax.tree.map(lambda x: x + 1.0, init)
  monkeypatch.setitem(sys.modules, module.__name__, module)


def run_main(command, argv, monkeypatch):
  """`command.main()` after parsing `argv` into flags of its own (`define_flags`)."""
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides from it.
  values = flags.FlagValues()
  monkeypatch.setattr(flags, "FLAGS", values)
  command.define_flags(values)
  values(argv)
  return command.main([])


# ---- The paper configs' tests (test_configs, test_mobilenet_train) ------------
# Mock TFDS data over the real split sizes, random BiT checkpoints, cheaper
# compiles, and the configs loaded by path.

import contextlib  # pylint: disable=g-import-not-at-top,wrong-import-position,wrong-import-order
import json  # pylint: disable=g-import-not-at-top,wrong-import-position,wrong-import-order
from unittest import mock  # pylint: disable=g-import-not-at-top,wrong-import-position

from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

from big_distill import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

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
  with mock.patch("tensorflow_datasets.testing.test_utils.MockFs", _NoFakeFs), \
       tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, data_dir=metadata_dir):
    yield


def write_checkpoint(model_kwargs, num_classes, path):
  """A random BiT `.npz` (nonzero head), made without compiling anything."""
  return write_random_bit(path, num_classes, **model_kwargs)


@pytest.fixture(scope="module", autouse=True)
def fast_compiles(tmp_path_factory):
  """Makes compiling, which is most of a runlocal run's time, cheaper here.

  The evaluators of one run compile the same step for different splits: the
  persistent cache turns the repeats into cache hits. The 'unsafe_rbg' PRNG
  makes the models' initialization cheaper to compile, and 3 steps do not
  repay XLA's optimizations (they halve the compile time). All is restored
  afterwards, for the other test modules of this process.
  """
  settings = {
      "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax_cache")),
      "jax_persistent_cache_min_compile_time_secs": 0.0,
      "jax_persistent_cache_min_entry_size_bytes": -1,
      "jax_default_prng_impl": "unsafe_rbg",
      "jax_disable_most_optimizations": True,
  }
  old = {k: jax.config.values[k] for k in settings}
  for k, v in settings.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()
  yield
  for k, v in old.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  last = {}
  for row in rows:
    last.update(row)
  return rows, last
