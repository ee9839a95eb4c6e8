"""BiT ResNetV2, exactly as the public BiT weights define it.

Kolesnikov et al., "Big Transfer (BiT)": pre-activation bottleneck ResNets with
GroupNorm and weight-standardized convolutions. Teachers (BiT-M R152x2) and
students (R50x1) are both of this family, so a student distilled here can be
loaded by any BiT implementation, and a released BiT checkpoint loads here.

Numerics that matter for matching the released weights:
- weight standardization over the kernel's spatial and input axes, eps 1e-10;
- GroupNorm with 32 groups and eps 1e-5, its variance computed as the mean of
  squared deviations (as BiT's TensorFlow code, timm and big_vision's
  `bit_paper` do), not as E[x^2] - E[x]^2, which loses precision where a
  group's mean is large against its spread (big_vision's authors found it
  changes the accuracy of loaded pre-trained weights);
- the stem's 3x3/2 max-pool runs over a map padded with *zeros* (not -inf);
  after the root conv there is no activation, so the padding value shows.
  big_vision's `bit_paper` model, which trained the paper's released teachers
  and students, pads with -inf instead: `stem_pool_pad="neg_inf"`. Nothing
  else in `bit_paper`'s forward pass differs from the BiT release.

Checkpoints: `load` reads the BiT release layout (`resnet/...`) and
big_vision's (`root_block/...`, bare or under `params/` or `opt/target/`);
`save` writes either. A frozen teacher is `freeze`d once after loading so that
its kernels are not standardized again in every step.
"""

from __future__ import annotations

import io
import logging
import re
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from big_distill import errors
from big_distill import fileio

STEM_POOL_PADS = ("zeros", "neg_inf")
DEPTHS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
LAYOUTS = ("bit", "big_vision")
HEAD_MISMATCH = ("reinit", "error")


def locate(init: str) -> str:
  """The model contract's name resolution: BiT's published files are given by
  their paths (gs://bit_models/...), so every init is its own path."""
  return init


def _groups(channels: int) -> int:
  # 32 groups as in BiT. Tiny test/demo models (width < 1) have fewer channels
  # than that in places, so they use one channel per group there.
  return min(32, channels)


def standardize(kernel):
  """Weight standardization: zero mean, unit variance per output channel."""
  axes = tuple(range(kernel.ndim - 1))
  kernel = kernel - jnp.mean(kernel, axis=axes, keepdims=True)
  return kernel / jnp.sqrt(jnp.var(kernel, axis=axes, keepdims=True) + 1e-10)


class StdConv(nn.Conv):
  """A convolution whose kernel is standardized before use (no bias).

  `kernels_standardized=True`: the stored kernel is already standardized (see
  `freeze`), so it is used as it is.
  """
  kernels_standardized: bool = False

  def param(self, name: str, *args, **kwargs):
    param = super().param(name, *args, **kwargs)
    if name == "kernel" and not self.kernels_standardized:
      param = standardize(param)
    return param


class GroupNorm(nn.Module):
  """GroupNorm whose group count follows `_groups`."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.GroupNorm(num_groups=_groups(x.shape[-1]), epsilon=1e-5,
                        use_fast_variance=False, dtype=self.dtype,
                        param_dtype=jnp.float32, name="group_norm")(x)


class Unit(nn.Module):
  """Pre-activation bottleneck unit: x + c(relu(gn(b(relu(gn(a(relu(gn(x)))))))))."""
  features: int  # Width of the bottleneck; the unit outputs 4x this.
  stride: int = 1
  dtype: Any = jnp.float32
  kernels_standardized: bool = False

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, s, p, name: StdConv(
        f, (k, k), (s, s), padding=p, use_bias=False, dtype=self.dtype,
        param_dtype=jnp.float32, kernels_standardized=self.kernels_standardized,
        name=name)
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
  # True only for a frozen model whose params went through `freeze`.
  kernels_standardized: bool = False

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
                dtype=self.dtype, param_dtype=jnp.float32,
                kernels_standardized=self.kernels_standardized, name="root_conv")(x)
    out["stem"] = x
    pad_value = 0.0 if self.stem_pool_pad == "zeros" else -jnp.inf
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=pad_value)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    for i, n in enumerate(DEPTHS[self.depth], start=1):
      for j in range(1, n + 1):
        stride = 2 if (i > 1 and j == 1) else 1
        x = Unit(base * 2 ** (i - 1), stride, self.dtype, self.kernels_standardized,
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
# A lean frozen teacher.
# ---------------------------------------------------------------------------

def _is_conv_kernel(path: Sequence[str]) -> bool:
  # Every kernel but the head's (a Dense layer) belongs to a StdConv.
  return path[-1] == "kernel" and path[0] != "head"


_standardize_jit = jax.jit(standardize)


def _params_of(tree) -> tuple[Any, Callable[[Any], Any]]:
  """(params tree, how to give a params tree back in `tree`'s form): a
  variables dict `{"params": ...}` or a bare params tree."""
  if isinstance(tree, Mapping) and set(tree) == {"params"}:
    return tree["params"], lambda p: {"params": p}
  return tree, lambda p: p


def freeze(model: Model, variables=None):
  """`(model, variables)` of a model that is never trained again, made cheaper.

  A teacher's kernels never change, yet `StdConv` standardizes them in every
  forward pass (a mean and a variance over every kernel, every step). This
  standardizes each conv kernel once, in float32, and returns the model with
  `kernels_standardized=True`, which uses them as they are: the same logits.
  Cast the params to the compute dtype afterwards (standardizing in bfloat16
  would lose precision). Host (numpy) params are standardized on the CPU and
  returned as numpy; device arrays stay where they are. Never train the frozen
  params: the optimizer would move them off the standardized set.
  `variables`: a variables dict or a bare params tree (returned in the same
  form), or None for the frozen model alone (`(model, None)`: what a step
  built before its weights are loaded runs).
  """
  if model.kernels_standardized:
    raise ValueError("freeze(): this model is already frozen (kernels_standardized=True).")
  frozen = model.clone(kernels_standardized=True)
  if variables is None:
    return frozen, None
  params, wrap = _params_of(variables)
  return frozen, wrap(freeze_params(params))


def freeze_params(params):
  """The params half of `freeze`: every standardized conv's kernel standardized once."""
  cpu = jax.local_devices(backend="cpu")[0]  # This process's: multi-process safe.

  def leaf(path, v):
    if not _is_conv_kernel([k.key for k in path]):
      return v
    if isinstance(v, jax.Array):
      return _standardize_jit(v.astype(jnp.float32))
    with jax.default_device(cpu):
      return np.asarray(_standardize_jit(np.asarray(v, np.float32)))

  return jax.tree_util.tree_map_with_path(leaf, params)


# ---------------------------------------------------------------------------
# Checkpoints: the BiT release layout and big_vision's `bit_paper` layout.
# ---------------------------------------------------------------------------

class CheckpointFileError(errors.CheckpointError, ValueError):
  """A weights file that cannot be read or does not fit the model.

  Also a ValueError, as these errors were before errors.py existed.
  """


class CheckpointNotFoundError(errors.CheckpointError, FileNotFoundError):
  """A weights file that does not exist or cannot be opened."""


# Where each parameter of `Model` lives in each layout's file. Fields: the
# block and unit (both 1-based, units as 01, 02, ...), the unit's branch
# (a, b, c; bit_paper numbers them 1, 2, 3), the leaf and BiT's name for it.
_NAMES = {
    "bit": {
        "root": "resnet/root_block/standardized_conv2d/kernel",
        "gn_final": "resnet/group_norm/{bit_leaf}",
        "head": "resnet/head/conv2d/{leaf}",
        "proj": "resnet/block{block}/unit{unit}/a/proj/standardized_conv2d/kernel",
        "gn": "resnet/block{block}/unit{unit}/{branch}/group_norm/{bit_leaf}",
        "conv": "resnet/block{block}/unit{unit}/{branch}/standardized_conv2d/kernel",
    },
    "big_vision": {
        "root": "root_block/conv_root/kernel",
        "gn_final": "norm-pre-head/{leaf}",
        "head": "head/{leaf}",
        "proj": "block{block}/unit{unit}/conv_proj/kernel",
        "gn": "block{block}/unit{unit}/gn{branch_number}/{leaf}",
        "conv": "block{block}/unit{unit}/conv{branch_number}/kernel",
    },
}


def _file_key(path: Sequence[str], layout: str) -> str:
  """Maps a flax parameter path of `Model` to its key in a `layout` `.npz`."""
  *mods, leaf = path
  fields = dict(leaf=leaf, bit_leaf={"scale": "gamma", "bias": "beta"}.get(leaf))
  kind = {("root_conv",): "root", ("gn_final", "group_norm"): "gn_final",
          ("head",): "head"}.get(tuple(mods))
  m = re.fullmatch(r"block(\d)_unit(\d+)", mods[0])
  if kind is None and m:
    kind, branch = ("proj", "a") if mods[1] == "proj" else mods[1].split("_")
    fields.update(block=m[1], unit=m[2], branch=branch, branch_number="abc".index(branch) + 1)
  if kind is None:
    raise ValueError(f"No {layout} key for parameter {'/'.join(path)}.")
  return _NAMES[layout][kind].format(**fields)


def _file_shape(path: Sequence[str], shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """The shape the layout stores a parameter of the model's `shape` in."""
  if path[0] == "head" and path[-1] == "kernel":
    return (1, 1, *shape) if layout == "bit" else shape  # BiT's head is a 1x1 conv.
  if layout == "big_vision" and path[-1] in ("scale", "bias") and path[0] != "head":
    return (1, 1, 1, *shape)  # bit_paper's own GroupNorm keeps (1, 1, 1, C).
  return shape


_HEAD_KEYS = {layout: (_file_key(["head", "kernel"], layout), _file_key(["head", "bias"], layout))
              for layout in LAYOUTS}


def _leaves(params) -> list[tuple[list[str], Any]]:
  return [([k.key for k in p], v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]]


def to_arrays(params, layout: str = "bit") -> dict[str, np.ndarray]:
  """`params` as the float32 arrays of a `layout` `.npz` ("bit" or "big_vision")."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: must be one of {LAYOUTS}.")
  out = {}
  for path, v in _leaves(params):
    v = np.asarray(jax.device_get(v), np.float32)
    out[_file_key(path, layout)] = v.reshape(_file_shape(path, v.shape, layout))
  return out


def to_bit_arrays(params) -> dict[str, np.ndarray]:
  """The BiT `.npz` arrays of `params` (head kernel as 1x1xCxK)."""
  return to_arrays(params, "bit")


def _open(path: str, mode: str):
  if "://" in path:  # gs://, s3://, ...: only TensorFlow's gfile knows them.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile.GFile(path, mode)
  return open(path, mode)


def save(params, path: str, layout: str = LAYOUTS[0]) -> None:
  """Writes `params` (a params tree or variables dict) as an `.npz` that
  other BiT codebases load.

  layout="bit": the BiT release layout (`resnet/...`), read by BiT's own code
  and timm's `resnetv2_*_bit`. layout="big_vision": the flattened `bit_paper`
  tree with bare `/`-joined names, GroupNorm parameters as (1, 1, 1, C) and the
  head as (C, K), read by big_vision's `bit_paper.load` as it is (its
  `load_params` takes a path containing ".npz" as such a file). Float32 in both.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: must be one of {LAYOUTS}.")
  fileio.write_npz(path, to_arrays(_params_of(params)[0], layout))


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Reads an `.npz` of arrays, refusing anything pickled or not an `.npz`."""
  try:
    with _open(path, "rb") as f:
      data = f.read()
  except (FileNotFoundError, OSError) as e:
    raise CheckpointNotFoundError(
        f"Checkpoint {path!r} does not exist or cannot be read ({e}). Check the "
        "path, or download the BiT file (e.g. BiT-M-R152x2.npz) to it.") from e
  if not data.startswith(b"PK"):
    raise CheckpointFileError(
        f"Checkpoint {path!r} is not an .npz file (a zip of numpy arrays). "
        "Pickled files are refused (they can run code); convert it with "
        "np.savez(path, **arrays) from a trusted environment.")
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except ValueError as e:
    raise CheckpointFileError(
        f"Checkpoint {path!r} holds pickled objects, which are refused (they can "
        "run code). Save plain arrays with np.savez.") from e
  except Exception as e:  # zipfile.BadZipFile and friends.
    raise CheckpointFileError(f"Checkpoint {path!r} is not a readable .npz file: {e}") from e


def _unwrap(arrays: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
  """The parameter arrays of a BiT or big_vision `.npz`, bfloat16 recovered."""
  # big_vision's trainers save {"params": ..., "opt": ...} (flax.optim-era
  # files: {"opt": {"target": params, ...}}); released files hold the params
  # alone. Like big_vision's load_params, take the params and nothing else.
  for prefix in ("params/", "opt/target/"):
    if any(k.startswith(prefix) for k in arrays):
      ignored = sum(not k.startswith(prefix) for k in arrays)
      if ignored:
        logging.info("%s: reading the %d arrays under %s, ignoring %d others "
                     "(optimizer state).", path, len(arrays) - ignored, prefix, ignored)
      arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
      break
  out = {}
  for k, v in arrays.items():
    if v.dtype.kind == "V":
      # numpy has no bfloat16: np.savez stores it as 2-byte void (|V2).
      if v.dtype.itemsize != 2 or v.dtype.names is not None:
        raise CheckpointFileError(
            f"Checkpoint {path!r}: array {k} has raw dtype {v.dtype}, which is not a "
            "bfloat16 stored by numpy (|V2). Save float32 or bfloat16 arrays.")
      v = v.view(jnp.bfloat16)
    # Some BiT release files number their convs (standardized_conv2d_1, ...).
    out[re.sub(r"/standardized_conv2d_\d+/", "/standardized_conv2d/", k)] = v
  return out


def _layout(arrays: dict[str, np.ndarray], path: str) -> str:
  n_bit = sum(k.startswith("resnet/") for k in arrays)
  n_bv = sum(bool(re.match(r"(root_block|block\d+|norm-pre-head|head)/", k)) for k in arrays)
  if n_bit or n_bv:
    return "bit" if n_bit >= n_bv else "big_vision"
  raise CheckpointFileError(
      f"Checkpoint {path!r} is in neither the BiT release layout (resnet/root_block/"
      "...) nor big_vision's (root_block/conv_root/kernel, block1/unit01/..., bare or "
      f"under params/ or opt/target/). Its first keys: {sorted(arrays)[:4]}. Is it "
      "the checkpoint of another kind of model?")


def load(template, path: str, *, head_mismatch: str = "reinit", model: Model | None = None,
         stem_pool_pad: str | None = None):
  """Returns `template` with every array replaced by the one in `path`.

  `template`: a variables dict `{"params": ...}` or a bare params tree (and
  the result is the same), of numpy arrays or ShapeDtypeStructs.

  `path` (local or remote, e.g. gs://) is an `.npz` in the BiT release layout
  (`resnet/...`, as written by `save()`) or in big_vision's `bit_paper` layout
  (bare, or under `params/` or `opt/target/`, bfloat16 arrays included), told
  apart by its keys. Arrays are cast to the dtypes of `template`.

  A head whose class count differs from the model's (e.g. a BiT-M file with
  21,843 classes loaded for Flowers), or a file without a head:
  head_mismatch="reinit" keeps the template's head (zeros where the template
  holds no values: BiT fine-tuning starts its head at zeros);
  head_mismatch="error" raises a CheckpointError (a teacher's head must be
  the data set's). Any other missing, unexpected or mis-shaped array is a
  CheckpointError naming it. `model`: the Model the template belongs to, so
  that a big_vision file loaded into a `stem_pool_pad="zeros"` model warns
  once (`stem_pool_pad=`: the same setting given alone; deprecated).
  """
  if head_mismatch not in HEAD_MISMATCH:
    raise ValueError(f"head_mismatch={head_mismatch!r}: must be one of {HEAD_MISMATCH}.")
  if stem_pool_pad is None and model is not None:
    stem_pool_pad = model.stem_pool_pad
  init_params, wrap = _params_of(template)
  arrays = _unwrap(read_npz(path), path)
  layout = _layout(arrays, path)
  if layout == "big_vision" and stem_pool_pad == "zeros":
    logging.warning(
        "%s is in big_vision's layout: big_vision's bit_paper model (which trained the "
        "paper's released teachers and students) pads the stem max-pool with -inf, but "
        "this model has stem_pool_pad='zeros', which changes its logits. Set "
        "stem_pool_pad='neg_inf' in the model's kwargs (e.g. --config.t1.stem_pool_pad="
        "neg_inf).", path)
  key_fn = lambda p: _file_key(p, layout)
  leaves = _leaves(init_params)
  # What the model expects, by file key: the shape in the file's layout.
  expected = {key_fn(p): _file_shape(p, tuple(v.shape), layout) for p, v in leaves}
  model_shape = {key_fn(p): tuple(v.shape) for p, v in leaves}
  # An array in the model's own shape is accepted too (e.g. a (C, K) BiT head).
  for k, v in arrays.items():
    if k in model_shape and v.shape != expected[k] and v.shape == model_shape[k]:
      arrays[k] = v.reshape(expected[k])

  k_key, b_key = _HEAD_KEYS[layout]
  want = model_shape[k_key]  # (C, K)
  if layout == "bit" and k_key in arrays and arrays[k_key].ndim == 2:
    arrays[k_key] = arrays[k_key][None, None]  # A (C, K') head of another class count.
  head = None  # Why the head is not taken from the file, if it is not.
  if k_key in arrays and b_key in arrays:
    have = arrays[k_key].shape
    if (have == expected[k_key][:-1] + have[-1:] and have[-1] != want[1]
        and arrays[b_key].shape == have[-1:]):
      head = f"has a head for {have[-1]} classes, the model has num_classes={want[1]}"
  elif k_key not in arrays and b_key not in arrays:
    head = f"has no classifier head ({k_key}, {b_key})"
  if head and head_mismatch == "error":
    raise CheckpointFileError(
        f"Checkpoint {path!r} {head}: its logits are not this data set's. Fine-tune "
        "it on this data set first (configs/teachers/), or, if it was trained on "
        "this label set, set the model's num_classes to match the file.")
  if head:
    logging.info("%s %s; head re-initialized (the model's own head kept).", path, head)
    for k, leaf in ((k_key, init_params["head"]["kernel"]), (b_key, init_params["head"]["bias"])):
      arrays[k] = (np.zeros(expected[k], np.float32) if isinstance(leaf, jax.ShapeDtypeStruct)
                   else np.asarray(leaf).reshape(expected[k]))

  missing = [k for k in expected if k not in arrays]
  unexpected = [k for k in arrays if k not in expected]
  misshaped = [k for k in expected if k in arrays and arrays[k].shape != expected[k]]
  if missing or unexpected or misshaped:
    lines = []
    for k in misshaped:
      lines.append(f"  {k}: file {arrays[k].shape}, model {expected[k]}")
    for k in missing:
      lines.append(f"  {k}: missing from the file (model {expected[k]})")
    for k in unexpected:
      lines.append(f"  {k}: in the file {arrays[k].shape}, not in the model")
    shown = lines[:12] + ([f"  ... and {len(lines) - 12} more"] if len(lines) > 12 else [])
    raise CheckpointFileError(
        f"Checkpoint {path!r} ({'BiT release' if layout == 'bit' else 'big_vision'} "
        f"layout) does not match the model ({len(misshaped)} mis-shaped, "
        f"{len(missing)} missing, {len(unexpected)} unexpected arrays); first "
        "mismatch first:\n" + "\n".join(shown) +
        "\nCheck that the config's depth/width/num_classes match the checkpoint "
        "(e.g. R152x2: depth=152, width=2).")

  treedef = jax.tree_util.tree_structure(init_params)
  new_leaves = [np.asarray(arrays[key_fn(p)].reshape(v.shape), dtype=v.dtype) for p, v in leaves]
  return wrap(jax.tree_util.tree_unflatten(treedef, new_leaves))
