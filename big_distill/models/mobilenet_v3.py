"""MobileNet v3 (Howard et al. 2019, "Searching for MobileNetV3") students.

The paper distils its R152x2 teachers into MobileNet v3 Large and Small
(Section 3.6, Table 3), with GroupNorm (8 groups) "for most experiments"
instead of BatchNorm, and none of MobileNet's usual training tricks (no
dropout, no stochastic depth here either). `norm="batch"` is the original
network, for the paper's Large-BN row.

The architecture is the standard one, as in timm's `mobilenetv3_large_100` /
`mobilenetv3_small_100` (parameter counts equal for 1,000 classes: 5,483,032
and 2,542,856; GroupNorm has the same count, its scale and bias replacing
BatchNorm's):
- stem: 3x3/2 conv to 16 channels, norm, hard-swish;
- blocks (`LARGE`, `SMALL`): inverted residuals. A 1x1 expansion conv (none
  when the expansion ratio is 1), a kxk depthwise conv with the stride,
  squeeze-and-excitation on the expanded channels (mean -> 1x1 reduce to a
  quarter, rounded to a multiple of 8 -> ReLU -> 1x1 expand -> hard-sigmoid),
  a linear 1x1 projection; norm after each conv, the block's activation (ReLU
  or hard-swish) after the first two; a residual where stride is 1 and the
  channels do not change;
- a 1x1 conv (960 / 576 channels), norm, hard-swish; global average pool;
- the "efficient head": a 1x1 conv to 1280 (Large) / 1024 (Small) with bias
  and no norm, hard-swish (the result is `outputs["pre_logits"]`), and the
  classifier `head` (zero-initialized, as in bit.py: a student starts from
  uniform predictions).
Convolutions pad symmetrically by k // 2 (PyTorch's convention, timm's).

`width` scales every channel count but the stem's (below 0.75) and the head's
1280 / 1024, each rounded to a multiple of 8 and never more than 10% down
(`make_divisible`), as timm does; expanded and squeeze widths are rounded the
same way from the scaled channels. `small_input=True` is for 32px images
(Fashion-MNIST): it drops the stem's stride and the first stride-2 block's,
so the network downsamples 8x instead of 32x (a 32px image ends as a 4x4 map,
as a 128px one does in the full network); no parameter changes.

GroupNorm: `groups` groups, eps 1e-5. Every channel count of the network is a
multiple of 8, so 8 groups always divide it; for another `groups`, a layer
whose channels it does not divide uses the largest divisor of its channel
count below `groups` (e.g. groups=32 on 24 channels: 24 groups).

BatchNorm: running averages in the `batch_stats` collection, decay 0.99 and
eps 1e-3 (the TF reference's). `train=True` normalizes with the batch's
statistics and updates the averages (`apply(..., mutable=["batch_stats"])`);
`train=False` uses the averages. Under `jax.jit` with a data-sharded batch the
statistics are those of the global batch.

Checkpoints (`save` / `load`): an `.npz` of the flattened tree, `/`-joined keys
(`block03_depthwise/kernel`, `head/bias`), float32; BatchNorm's running
averages under the prefix `batch_stats/` (`batch_stats/stem_norm/mean`).
Both functions take either the params tree or the whole variables dict
`{"params": ..., "batch_stats": ...}`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from big_distill import fileio
from big_distill.errors import CheckpointError, ConfigError
from big_distill.models import bit

VARIANTS = ("large", "small")
NORMS = ("group", "batch")


@dataclasses.dataclass(frozen=True)
class Block:
  kernel: int      # Depthwise kernel size.
  expansion: float  # Expanded channels / input channels.
  out: int         # Output channels at width 1.
  se: bool         # Squeeze-and-excitation.
  act: str         # 'relu' | 'hswish'.
  stride: int


# Howard et al. 2019, Table 1 (Large) and Table 2 (Small); expansions as
# ratios of the block's input, as timm's definitions give them, so that they
# scale with `width` the way the reference does.
LARGE = (
    Block(3, 1, 16, False, "relu", 1),
    Block(3, 4, 24, False, "relu", 2),
    Block(3, 3, 24, False, "relu", 1),
    Block(5, 3, 40, True, "relu", 2),
    Block(5, 3, 40, True, "relu", 1),
    Block(5, 3, 40, True, "relu", 1),
    Block(3, 6, 80, False, "hswish", 2),
    Block(3, 2.5, 80, False, "hswish", 1),
    Block(3, 2.3, 80, False, "hswish", 1),
    Block(3, 2.3, 80, False, "hswish", 1),
    Block(3, 6, 112, True, "hswish", 1),
    Block(3, 6, 112, True, "hswish", 1),
    Block(5, 6, 160, True, "hswish", 2),
    Block(5, 6, 160, True, "hswish", 1),
    Block(5, 6, 160, True, "hswish", 1),
)
SMALL = (
    Block(3, 1, 16, True, "relu", 2),
    Block(3, 4.5, 24, False, "relu", 2),
    Block(3, 3.67, 24, False, "relu", 1),
    Block(5, 4, 40, True, "hswish", 2),
    Block(5, 6, 40, True, "hswish", 1),
    Block(5, 6, 40, True, "hswish", 1),
    Block(5, 3, 48, True, "hswish", 1),
    Block(5, 3, 48, True, "hswish", 1),
    Block(5, 6, 96, True, "hswish", 2),
    Block(5, 6, 96, True, "hswish", 1),
    Block(5, 6, 96, True, "hswish", 1),
)
# variant -> (blocks, channels of the last conv, of the head conv).
ARCHS = {"large": (LARGE, 960, 1280), "small": (SMALL, 576, 1024)}
STEM = 16
BN_MOMENTUM, BN_EPS, GN_EPS = 0.99, 1e-3, 1e-5


def make_divisible(v: float, divisor: int = 8) -> int:
  """Rounds to the nearest multiple of `divisor` (at least one), never >10% down."""
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


def group_count(channels: int, groups: int) -> int:
  """`groups` if it divides `channels`, else the largest divisor below it."""
  return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


def hard_sigmoid(x):
  return jax.nn.relu6(x + 3.0) / 6.0


def hard_swish(x):
  return x * hard_sigmoid(x)


_ACTS = {"relu": nn.relu, "hswish": hard_swish}


class Model(nn.Module):
  """MobileNet v3 classifier with the contract of `bit.Model`.

  `apply(variables, images_BHWC, train=...)` returns `(logits_BK, outputs)`;
  `outputs` has "stem", "blockNN" (each block's map), "features" (the last
  conv's map), "pre_logits" (the head conv's 1280/1024 features) and "logits".
  Parameters and logits are float32; convolutions and norms compute in
  `dtype`. With `norm="batch"`, pass `mutable=["batch_stats"]` when
  `train=True`.
  """
  num_classes: int
  variant: str = "large"
  width: float = 1.0
  norm: str = "group"
  groups: int = 8
  small_input: bool = False
  dtype: Any = jnp.float32

  def __post_init__(self):
    # Checked at construction, i.e. while the trainer builds its models from
    # the config, before anything is compiled.
    if self.variant not in VARIANTS:
      raise ConfigError(f"MobileNet v3 variant={self.variant!r}: must be one of {VARIANTS}.")
    if self.norm not in NORMS:
      raise ConfigError(f"MobileNet v3 norm={self.norm!r}: must be 'group' (the paper's "
                        "GroupNorm) or 'batch' (BatchNorm, batch_stats collection).")
    if not self.width > 0:
      raise ConfigError(f"MobileNet v3 width={self.width}: must be > 0 (1.0 is the paper's).")
    if self.groups < 1:
      raise ConfigError(f"MobileNet v3 groups={self.groups}: must be >= 1.")
    super().__post_init__()

  def channels(self, c: int) -> int:
    return make_divisible(c * self.width)

  def _norm(self, name: str, train: bool):
    if self.norm == "batch":
      return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                          epsilon=BN_EPS, dtype=self.dtype, param_dtype=jnp.float32,
                          name=name)
    return lambda x: nn.GroupNorm(num_groups=group_count(x.shape[-1], self.groups),
                                  epsilon=GN_EPS, dtype=self.dtype,
                                  param_dtype=jnp.float32, name=name)(x)

  def _conv(self, features: int, kernel: int, stride: int, name: str, groups: int = 1):
    p = kernel // 2
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((p, p), (p, p)),
                   feature_group_count=groups, use_bias=False, dtype=self.dtype,
                   param_dtype=jnp.float32, name=name)

  @nn.compact
  def __call__(self, images_BHWC, train: bool = False):
    blocks, last, head = ARCHS[self.variant]
    out = {}
    # timm keeps the stem at 16 channels below width 0.75.
    stem = STEM if self.width < 0.75 else self.channels(STEM)
    x = images_BHWC.astype(self.dtype)
    x = self._conv(stem, 3, 1 if self.small_input else 2, "stem_conv")(x)
    x = hard_swish(self._norm("stem_norm", train)(x))
    out["stem"] = x
    first_downsample = True
    for i, b in enumerate(blocks, start=1):
      stride = b.stride
      if stride == 2 and first_downsample:
        first_downsample = False
        stride = 1 if self.small_input else 2
      x = self._block(x, b, stride, f"block{i:02d}", train)
      out[f"block{i:02d}"] = x
    x = hard_swish(self._norm("final_norm", train)(
        self._conv(self.channels(last), 1, 1, "final_conv")(x)))
    out["features"] = x
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = hard_swish(nn.Dense(head, dtype=jnp.float32, param_dtype=jnp.float32,
                            name="head_conv")(x))
    out["pre_logits"] = x
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                      dtype=jnp.float32, param_dtype=jnp.float32, name="head")(x)
    out["logits"] = logits
    return logits, out

  def _block(self, x, b: Block, stride: int, name: str, train: bool):
    act = _ACTS[b.act]
    cin, cout = x.shape[-1], self.channels(b.out)
    mid = make_divisible(cin * b.expansion)
    y = x
    if b.expansion != 1:
      y = act(self._norm(f"{name}_expand_norm", train)(
          self._conv(mid, 1, 1, f"{name}_expand")(y)))
    y = act(self._norm(f"{name}_depthwise_norm", train)(
        self._conv(mid, b.kernel, stride, f"{name}_depthwise", groups=mid)(y)))
    if b.se:
      s = jnp.mean(y, axis=(1, 2), keepdims=True)
      s = nn.relu(nn.Dense(make_divisible(mid * 0.25), dtype=self.dtype,
                           param_dtype=jnp.float32, name=f"{name}_se_reduce")(s))
      s = hard_sigmoid(nn.Dense(mid, dtype=self.dtype, param_dtype=jnp.float32,
                                name=f"{name}_se_expand")(s))
      y = y * s
    y = self._norm(f"{name}_project_norm", train)(
        self._conv(cout, 1, 1, f"{name}_project")(y))
    if stride == 1 and cin == cout:
      y = y + x
    return y


# ---------------------------------------------------------------------------
# Checkpoints: the flat `.npz` layout of this module.
# ---------------------------------------------------------------------------

COLLECTIONS = ("params", "batch_stats")
LAYOUTS = ("flat",)  # The flattened tree, `/`-joined keys (the module docstring).
HEAD_MISMATCH = ("reinit", "error")
_STATS_PREFIX = "batch_stats/"


def locate(init: str) -> str:
  """The model contract's name resolution: this family names no published
  checkpoints, so every init is its own path."""
  return init


def _as_variables(tree) -> tuple[dict, bool]:
  """`(variables, was_variables)`: a params tree is wrapped as {"params": tree}."""
  if isinstance(tree, Mapping) and "params" in tree and set(tree) <= set(COLLECTIONS):
    return dict(tree), True
  return {"params": tree}, False


def _flat(variables: dict) -> dict[str, Any]:
  out = {}
  for col, tree in variables.items():
    prefix = "" if col == "params" else f"{col}/"
    for k, v in traverse_util.flatten_dict(tree, sep="/").items():
      out[prefix + k] = v
  return out


def to_arrays(tree) -> dict[str, np.ndarray]:
  """The `.npz` arrays of a params tree or variables dict."""
  return {k: np.asarray(jax.device_get(v)) for k, v in _flat(_as_variables(tree)[0]).items()}


def save(tree, path: str, layout: str = LAYOUTS[0]) -> None:
  """Writes the params tree or variables dict `tree` as an `.npz` (see module doc)."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: must be one of {LAYOUTS}.")
  fileio.write_npz(path, to_arrays(tree))


def _as_dtype(a: np.ndarray, dtype) -> np.ndarray:
  if a.dtype.kind == "V" and a.dtype.itemsize == 2:  # numpy's bfloat16 on disk.
    a = a.view(jnp.bfloat16)
  return np.asarray(a, dtype=dtype)


def freeze(model: Model, variables):
  """A frozen MobileNet has nothing to precompute: its arguments, unchanged."""
  return model, variables


def _head(arrays: dict[str, Any], expected: dict[str, Any]) -> str | None:
  """Why the file's head does not fit the model, if it does not."""
  want = tuple(expected["head/kernel"].shape)  # (C, K)
  kernel, bias = arrays.get("head/kernel"), arrays.get("head/bias")
  if kernel is None and bias is None:
    return "has no classifier head (head/kernel, head/bias)"
  if (kernel is not None and bias is not None and kernel.ndim == 2
      and kernel.shape[0] == want[0] and kernel.shape[1] != want[1]
      and bias.shape == kernel.shape[1:]):
    return f"has a head for {kernel.shape[1]} classes, the model has num_classes={want[1]}"
  return None


def load(template, path: str, *, head_mismatch: str = "reinit", model: Model | None = None):
  """`template` (params tree or variables dict) with every array read from `path`.

  Arrays are matched by key and cast to the template's dtypes. A head of
  another class count, or none: head_mismatch="reinit" keeps the template's
  head (zeros where it holds ShapeDtypeStructs), "error" raises a
  `CheckpointError`. Any other missing, unexpected or mis-shaped array is a
  `CheckpointError` that names it. `model`: unused (no setting of this
  family is hidden from the shapes).
  """
  del model
  if head_mismatch not in HEAD_MISMATCH:
    raise ValueError(f"head_mismatch={head_mismatch!r}: must be one of {HEAD_MISMATCH}.")
  try:
    arrays = bit.read_npz(path)
  except (FileNotFoundError, ValueError) as e:
    raise CheckpointError(str(e)) from None
  variables, was_variables = _as_variables(template)
  expected = _flat(variables)
  head = _head(arrays, expected)
  if head and head_mismatch == "error":
    raise CheckpointError(
        f"Checkpoint {path!r} {head}: its logits are not this data set's. Fine-tune "
        "it on this data set first, or, if it was trained on this label set, set the "
        "model's num_classes to match the file.")
  if head:
    logging.info("%s %s; head re-initialized (the model's own head kept).", path, head)
    for k in ("head/kernel", "head/bias"):
      leaf = expected[k]
      arrays[k] = (np.zeros(leaf.shape, leaf.dtype) if isinstance(leaf, jax.ShapeDtypeStruct)
                   else np.asarray(leaf))
  missing = [k for k in expected if k not in arrays]
  unexpected = [k for k in arrays if k not in expected]
  misshaped = [k for k in expected if k in arrays and arrays[k].shape != tuple(expected[k].shape)]
  if missing or unexpected or misshaped:
    lines = [f"  {k}: file {arrays[k].shape}, model {tuple(expected[k].shape)}" for k in misshaped]
    lines += [f"  {k}: missing from the file (model {tuple(expected[k].shape)})" for k in missing]
    lines += [f"  {k}: in the file {arrays[k].shape}, not in the model" for k in unexpected]
    shown = lines[:12] + ([f"  ... and {len(lines) - 12} more"] if len(lines) > 12 else [])
    hints = []
    file_stats = any(k.startswith(_STATS_PREFIX) for k in arrays)
    model_stats = any(k.startswith(_STATS_PREFIX) for k in expected)
    if file_stats and not model_stats:
      hints.append("The file holds BatchNorm statistics (batch_stats/...): it is a "
                   "norm='batch' model" + ("" if was_variables else
                                           ", to be loaded with the whole variables dict"))
    elif model_stats and not file_stats:
      hints.append("The model has BatchNorm statistics but the file has none: it is "
                   "a norm='group' checkpoint, or one saved from the params alone")
    hints.append("Check that variant/width/norm/num_classes match the checkpoint")
    raise CheckpointError(
        f"Checkpoint {path!r} does not match the MobileNet v3 model ({len(misshaped)} "
        f"mis-shaped, {len(missing)} missing, {len(unexpected)} unexpected arrays):\n"
        + "\n".join(shown) + "\n" + ". ".join(hints) + ".")
  loaded = {}
  for col, tree in variables.items():
    prefix = "" if col == "params" else f"{col}/"
    flat = traverse_util.flatten_dict(tree, sep="/")
    loaded[col] = traverse_util.unflatten_dict(
        {k: _as_dtype(arrays[prefix + k], v.dtype) for k, v in flat.items()}, sep="/")
  return loaded if was_variables else loaded["params"]
