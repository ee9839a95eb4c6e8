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
