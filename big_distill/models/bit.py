"""BiT ResNetV2, exactly as the public BiT weights define it.

Kolesnikov et al., "Big Transfer (BiT)": pre-activation bottleneck ResNets with
GroupNorm and weight-standardized convolutions. Teachers (BiT-M R152x2) and
students (R50x1) are both of this family, so a student distilled here can be
loaded by any BiT implementation, and a released BiT checkpoint loads here.

Numerics that matter for matching the released weights:
- weight standardization over the kernel's spatial and input axes, eps 1e-10;
- GroupNorm with 32 groups and eps 1e-5;
- the stem's 3x3/2 max-pool runs over a map padded with *zeros* (not -inf);
  after the root conv there is no activation, so the padding value shows.
  big_vision's `bit_paper` model, which trained the paper's released teachers
  and students, pads with -inf instead: `stem_pool_pad="neg_inf"`.
"""

from __future__ import annotations

import io
import logging
import os
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

STEM_POOL_PADS = ("zeros", "neg_inf")
DEPTHS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _groups(channels: int) -> int:
  # 32 groups as in BiT. Tiny test/demo models (width < 1) have fewer channels
  # than that in places, so they use one channel per group there.
  return min(32, channels)


class StdConv(nn.Conv):
  """A convolution whose kernel is standardized before use (no bias)."""

  def param(self, name: str, *args, **kwargs):
    param = super().param(name, *args, **kwargs)
    if name == "kernel":
      axes = tuple(range(param.ndim - 1))
      param = param - jnp.mean(param, axis=axes, keepdims=True)
      param = param / jnp.sqrt(jnp.var(param, axis=axes, keepdims=True) + 1e-10)
    return param


class GroupNorm(nn.Module):
  """GroupNorm whose group count follows `_groups`."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.GroupNorm(num_groups=_groups(x.shape[-1]), epsilon=1e-5,
                        dtype=self.dtype, param_dtype=jnp.float32,
                        name="group_norm")(x)


class Unit(nn.Module):
  """Pre-activation bottleneck unit: x + c(relu(gn(b(relu(gn(a(relu(gn(x)))))))))."""
  features: int  # Width of the bottleneck; the unit outputs 4x this.
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, s, p, name: StdConv(
        f, (k, k), (s, s), padding=p, use_bias=False, dtype=self.dtype,
        param_dtype=jnp.float32, name=name)
    out = nn.relu(GroupNorm(self.dtype, name="gn_a")(x))
    residual = x
    if x.shape[-1] != 4 * self.features or self.stride != 1:
      residual = conv(4 * self.features, 1, self.stride, "VALID", "proj")(out)
    out = conv(self.features, 1, 1, "VALID", "conv_a")(out)
    out = nn.relu(GroupNorm(self.dtype, name="gn_b")(out))
    out = conv(self.features, 3, self.stride, ((1, 1), (1, 1)), "conv_b")(out)
    out = nn.relu(GroupNorm(self.dtype, name="gn_c")(out))
    out = conv(4 * self.features, 1, 1, "VALID", "conv_c")(out)
    return out + residual


class Model(nn.Module):
  """BiT ResNetV2 classifier.

  `apply({"params": p}, images_BHWC, train=...)` returns `(logits_BK, outputs)`
  with `outputs["pre_logits"]` (the pooled features) and each stage's map.
  Logits are float32 whatever the compute `dtype`; parameters are float32.
  """
  num_classes: int
  depth: int = 50
  width: float = 1.0
  dtype: Any = jnp.float32
  # "zeros": the BiT release and timm; "neg_inf": big_vision's bit_paper.
  stem_pool_pad: str = "zeros"

  @nn.compact
  def __call__(self, images_BHWC, train: bool = False):
    del train  # No dropout or batch statistics in BiT; kept for a uniform API.
    if self.depth not in DEPTHS:
      raise ValueError(f"BiT depth must be one of {sorted(DEPTHS)}, got {self.depth}.")
    if self.stem_pool_pad not in STEM_POOL_PADS:
      raise ValueError(f"stem_pool_pad={self.stem_pool_pad!r}: must be one of {STEM_POOL_PADS} "
                       "('zeros' for BiT-release/timm weights, 'neg_inf' for big_vision's).")
    base = int(round(64 * self.width))
    if base < 1:
      raise ValueError(f"BiT width {self.width} leaves no channels.")
    out = {}
    x = images_BHWC.astype(self.dtype)
    x = StdConv(base, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                dtype=self.dtype, param_dtype=jnp.float32, name="root_conv")(x)
    out["stem"] = x
    pad_value = 0.0 if self.stem_pool_pad == "zeros" else -jnp.inf
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=pad_value)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    for i, n in enumerate(DEPTHS[self.depth], start=1):
      for j in range(1, n + 1):
        stride = 2 if (i > 1 and j == 1) else 1
        x = Unit(base * 2 ** (i - 1), stride, self.dtype,
                 name=f"block{i}_unit{j:02d}")(x)
      out[f"block{i}"] = x
    x = nn.relu(GroupNorm(self.dtype, name="gn_final")(x))
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    out["pre_logits"] = x
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                      dtype=jnp.float32, param_dtype=jnp.float32, name="head")(x)
    out["logits"] = logits
    return logits, out


# ---------------------------------------------------------------------------
# Checkpoint interop with the public BiT release layout.
# ---------------------------------------------------------------------------

_HEAD = ("resnet/head/conv2d/kernel", "resnet/head/conv2d/bias")


def _bit_key(path: Sequence[str]) -> str:
  """Maps a flax parameter path to its key in a BiT `.npz`."""
  *mods, leaf = path
  gn_leaf = {"scale": "gamma", "bias": "beta"}
  if mods == ["root_conv"]:
    return "resnet/root_block/standardized_conv2d/kernel"
  if mods == ["gn_final", "group_norm"]:
    return f"resnet/group_norm/{gn_leaf[leaf]}"
  if mods == ["head"]:
    return f"resnet/head/conv2d/{leaf}"
  m = re.fullmatch(r"block(\d)_unit(\d+)", mods[0])
  if m:
    unit = f"resnet/block{m[1]}/unit{m[2]}"
    if mods[1] == "proj":
      return f"{unit}/a/proj/standardized_conv2d/kernel"
    kind, branch = mods[1].split("_")
    if kind == "gn":
      return f"{unit}/{branch}/group_norm/{gn_leaf[leaf]}"
    return f"{unit}/{branch}/standardized_conv2d/kernel"
  raise ValueError(f"No BiT key for parameter {'/'.join(path)}.")


def _flat(params) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {_bit_key([k.key for k in p]): v for p, v in leaves}


def to_bit_arrays(params) -> dict[str, np.ndarray]:
  """The BiT `.npz` arrays of `params` (head kernel as 1x1xCxK)."""
  arrays = {k: np.asarray(jax.device_get(v), np.float32) for k, v in _flat(params).items()}
  kernel = arrays[_HEAD[0]]
  arrays[_HEAD[0]] = kernel.reshape(1, 1, *kernel.shape)
  return arrays


def _open(path: str, mode: str):
  if "://" in path:  # gs://, s3://, ...: only TensorFlow's gfile knows them.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.GFile(path, mode)
  return open(path, mode)


def save(params, path: str) -> None:
  """Writes `params` as a BiT release `.npz` (loadable by other BiT codebases)."""
  buf = io.BytesIO()
  np.savez(buf, **to_bit_arrays(params))
  # Written aside then renamed: a kill mid-write never leaves a torn file
  # where a finished one is expected (e.g. a later run's teacher_init).
  tmp = f"{path}.tmp"
  with _open(tmp, "wb") as f:
    f.write(buf.getvalue())
  if "://" in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.io.gfile.rename(tmp, path, overwrite=True)
  else:
    os.replace(tmp, path)


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Reads an `.npz` of arrays, refusing anything pickled or not an `.npz`."""
  try:
    with _open(path, "rb") as f:
      data = f.read()
  except (FileNotFoundError, OSError) as e:
    raise FileNotFoundError(
        f"Checkpoint {path!r} does not exist or cannot be read ({e}). Check the "
        "path, or download the BiT file (e.g. BiT-M-R152x2.npz) to it.") from e
  if not data.startswith(b"PK"):
    raise ValueError(
        f"Checkpoint {path!r} is not an .npz file (a zip of numpy arrays). "
        "Pickled files are refused (they can run code); convert it with "
        "np.savez(path, **arrays) from a trusted environment.")
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except ValueError as e:
    raise ValueError(
        f"Checkpoint {path!r} holds pickled objects, which are refused (they can "
        "run code). Save plain arrays with np.savez.") from e
  except Exception as e:  # zipfile.BadZipFile and friends.
    raise ValueError(f"Checkpoint {path!r} is not a readable .npz file: {e}") from e


def load(init_params, path: str):
  """Returns `init_params` with every array replaced by the one in `path`.

  `path` is a BiT release `.npz` or one written by `save()` (the same layout),
  local or on a remote file system (gs://...). A head whose class count
  differs (e.g. a BiT-M checkpoint with 21,843 classes loaded for Flowers) is
  replaced by zeros, as BiT fine-tuning does. Any other missing, unexpected or
  mis-shaped array is an error naming it.
  """
  arrays = read_npz(path)
  expected = _flat(init_params)
  head_reset = False
  if all(k in arrays for k in _HEAD):
    k_file = arrays[_HEAD[0]]
    want_k = expected[_HEAD[0]].shape
    if k_file.ndim == 4 and k_file.shape[:2] == (1, 1):
      k_file = k_file.reshape(k_file.shape[2:])
    if k_file.shape[0] == want_k[0] and k_file.shape[1] != want_k[1]:
      head_reset = True
      logging.info("%s: head has %d classes, model has %d; head re-initialized "
                   "to zeros.", path, k_file.shape[1], want_k[1])
    arrays[_HEAD[0]] = k_file
  elif not any(k in arrays for k in _HEAD):
    head_reset = True
    logging.info("%s has no head; head initialized to zeros.", path)
  if head_reset:
    for k in _HEAD:
      arrays[k] = np.zeros(expected[k].shape, np.float32)

  missing = [k for k in expected if k not in arrays]
  unexpected = [k for k in arrays if k not in expected]
  misshaped = [k for k in expected if k in arrays and arrays[k].shape != expected[k].shape]
  if missing or unexpected or misshaped:
    lines = []
    for k in misshaped:
      lines.append(f"  {k}: file {arrays[k].shape}, model {tuple(expected[k].shape)}")
    for k in missing:
      lines.append(f"  {k}: missing from the file (model {tuple(expected[k].shape)})")
    for k in unexpected:
      lines.append(f"  {k}: in the file {arrays[k].shape}, not in the model")
    shown = lines[:12] + ([f"  ... and {len(lines) - 12} more"] if len(lines) > 12 else [])
    raise ValueError(
        f"Checkpoint {path!r} does not match the model ({len(misshaped)} "
        f"mis-shaped, {len(missing)} missing, {len(unexpected)} unexpected "
        "arrays); first mismatch first:\n" + "\n".join(shown) +
        "\nCheck that the config's depth/width/num_classes match the checkpoint "
        "(e.g. R152x2: depth=152, width=2).")

  flat_paths = jax.tree_util.tree_flatten_with_path(init_params)
  new_leaves = [np.asarray(arrays[_bit_key([k.key for k in p])], dtype=v.dtype)
                for p, v in flat_paths[0]]
  return jax.tree_util.tree_unflatten(flat_paths[1], new_leaves)
