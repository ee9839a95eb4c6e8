"""Independent float64 numpy references of BiT's forward pass, for tests/test_bit.py.

Written from the descriptions, not from big_distill/models/bit.py, so that a
mistake there cannot repeat here:
- `bit_release_forward`: the BiT release, from its `.npz` key table
  (/work/shared/PAPER_NOTES.md), on a flat dict of `resnet/...` arrays;
- `bit_paper_forward`: big_vision's `big_vision/models/bit_paper.py`, on the
  flat dict of `/`-joined names its `.npz` files hold, with what big_vision
  would enforce: exactly the parameter names and shapes its `Model.init`
  creates (flax refuses other shapes, `common.merge_params` other names);
- `big_vision_load_params`: how big_vision's `utils.load_params` reads an
  `.npz` (params/ or opt/target/ or bare; 2-byte void as bfloat16).
bit_paper in short: StdConv standardizes over (h, w, in) with
x - mean, then / sqrt(mean(x^2) + 1e-10); its GroupNorm always has 32 groups
(a channel count not divisible by 32 fails), standardizes over (h, w, group)
with eps 1e-5, and keeps scale/bias as (1, 1, 1, C); the root conv is 7x7/2
padded by 3, then flax's `max_pool` 3x3/2 with explicit padding 1, which pads
with -inf; the head is a Dense (C, K) on the spatial mean of relu(gn(x)).
"""

import io

import ml_dtypes
import numpy as np

DEPTHS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def conv(x, w, stride, pad):
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw, _, cout = w.shape
  b, h, wd, _ = x.shape
  oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
  out = np.zeros((b, oh, ow, cout), np.float64)
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
      out += patch @ w[i, j]
  return out


def standardize(x, axes, eps):
  x = x - x.mean(axis=axes, keepdims=True)
  return x / np.sqrt(np.mean(np.square(x), axis=axes, keepdims=True) + eps)


def std_conv(x, w, stride, pad):
  return conv(x, standardize(np.asarray(w, np.float64), (0, 1, 2), 1e-10), stride, pad)


def group_norm(x, scale, bias, groups):
  b, h, w, c = x.shape
  assert c % groups == 0, (c, groups)  # bit_paper's reshape fails otherwise.
  xg = standardize(x.reshape(b, h, w, groups, c // groups), (1, 2, 4), 1e-5)
  return xg.reshape(b, h, w, c) * scale + bias


def max_pool_3x3_s2(x, pad_value):
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=pad_value)
  _, h, w, _ = x.shape
  oh, ow = (h - 3) // 2 + 1, (w - 3) // 2 + 1
  return np.max([x[:, i:i + 2 * oh:2, j:j + 2 * ow:2] for i in range(3) for j in range(3)], axis=0)


def relu(x):
  return np.maximum(x, 0)


# -- The BiT release (moved here from test_bit.py). -------------------------

def bit_release_forward(a, x, pool_pad_value=0.0):
  """Logits of a BiT release `.npz` (flat `resnet/...` dict); tiny widths allowed."""
  gn = lambda t, p: group_norm(t, a[p + "gamma"], a[p + "beta"], min(32, t.shape[-1]))
  x = std_conv(x.astype(np.float64), a["resnet/root_block/standardized_conv2d/kernel"], 2, 3)
  x = max_pool_3x3_s2(x, pool_pad_value)
  for blk in range(1, 5):
    units = sorted({k.split("/")[2] for k in a if k.startswith(f"resnet/block{blk}/")})
    for u in units:
      p = f"resnet/block{blk}/{u}/"
      stride = 2 if blk > 1 and u == "unit01" else 1
      out = relu(gn(x, p + "a/group_norm/"))
      res = x
      if p + "a/proj/standardized_conv2d/kernel" in a:
        res = std_conv(out, a[p + "a/proj/standardized_conv2d/kernel"], stride, 0)
      out = std_conv(out, a[p + "a/standardized_conv2d/kernel"], 1, 0)
      out = relu(gn(out, p + "b/group_norm/"))
      out = std_conv(out, a[p + "b/standardized_conv2d/kernel"], stride, 1)
      out = relu(gn(out, p + "c/group_norm/"))
      out = std_conv(out, a[p + "c/standardized_conv2d/kernel"], 1, 0)
      x = out + res
  x = relu(gn(x, "resnet/group_norm/")).mean(axis=(1, 2))
  k = a["resnet/head/conv2d/kernel"]
  return x @ k.reshape(k.shape[2:]) + a["resnet/head/conv2d/bias"]


# -- big_vision's bit_paper. --------------------------------------------------

def bit_paper_shapes(depth, width, num_classes):
  """{name: shape} of the parameters `bit_paper.Model(...).init` creates."""
  base = int(64 * width)  # bit_paper truncates; big_distill rounds (equal here).
  shapes = {"root_block/conv_root/kernel": (7, 7, 3, base)}
  cin = base
  for i, n in enumerate(DEPTHS[depth], start=1):
    nmid = base * 2 ** (i - 1)
    for j in range(1, n + 1):
      u = f"block{i}/unit{j:02d}/"
      stride = 2 if (i > 1 and j == 1) else 1
      for g, c in (("gn1", cin), ("gn2", nmid), ("gn3", nmid)):
        shapes[u + g + "/scale"] = shapes[u + g + "/bias"] = (1, 1, 1, c)
      if cin != 4 * nmid or stride != 1:
        shapes[u + "conv_proj/kernel"] = (1, 1, cin, 4 * nmid)
      shapes[u + "conv1/kernel"] = (1, 1, cin, nmid)
      shapes[u + "conv2/kernel"] = (3, 3, nmid, nmid)
      shapes[u + "conv3/kernel"] = (1, 1, nmid, 4 * nmid)
      cin = 4 * nmid
  shapes["norm-pre-head/scale"] = shapes["norm-pre-head/bias"] = (1, 1, 1, cin)
  shapes["head/kernel"], shapes["head/bias"] = (cin, num_classes), (num_classes,)
  return shapes


def random_bit_paper_params(depth, width, num_classes, seed):
  """Random float32 weights in bit_paper's layout, with GroupNorm and head non-trivial."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in bit_paper_shapes(depth, width, num_classes).items():
    if name.endswith("/scale"):
      v = 1 + 0.3 * rng.standard_normal(shape)
    elif name.endswith("/bias"):
      v = 0.3 * rng.standard_normal(shape)
    else:
      v = rng.standard_normal(shape)
    out[name] = v.astype(np.float32)
  return out


def bit_paper_to_bit_release(p):
  """The same weights under the BiT release's names and shapes."""
  gn_leaf = {"scale": "gamma", "bias": "beta"}
  out = {}
  for name, v in p.items():
    parts = name.split("/")
    if name == "root_block/conv_root/kernel":
      out["resnet/root_block/standardized_conv2d/kernel"] = v
    elif parts[0] == "norm-pre-head":
      out[f"resnet/group_norm/{gn_leaf[parts[1]]}"] = v.reshape(-1)
    elif parts[0] == "head":
      out[f"resnet/head/conv2d/{parts[1]}"] = v[None, None] if parts[1] == "kernel" else v
    else:
      blk, unit, layer, leaf = parts
      u = f"resnet/{blk}/{unit}/"
      if layer == "conv_proj":
        out[u + "a/proj/standardized_conv2d/kernel"] = v
      elif layer.startswith("conv"):
        out[u + "abc"[int(layer[-1]) - 1] + "/standardized_conv2d/kernel"] = v
      else:
        out[u + "abc"[int(layer[-1]) - 1] + f"/group_norm/{gn_leaf[leaf]}"] = v.reshape(-1)
  return out


def bit_paper_forward(p, x, depth, width):
  """Logits of big_vision's bit_paper.Model(depth, width) with flat params `p`.

  Refuses what big_vision would refuse: a missing or extra name, or a shape
  other than its init's.
  """
  num_classes = p["head/bias"].shape[0]
  shapes = bit_paper_shapes(depth, width, num_classes)
  assert set(p) == set(shapes), (sorted(set(p) ^ set(shapes)))[:5]
  for name, shape in shapes.items():
    assert p[name].shape == shape, (name, p[name].shape, shape)
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  gn = lambda t, name: group_norm(t, p[name + "/scale"], p[name + "/bias"], 32)
  x = std_conv(x.astype(np.float64), p["root_block/conv_root/kernel"], 2, 3)
  x = max_pool_3x3_s2(x, -np.inf)
  for i, n in enumerate(DEPTHS[depth], start=1):
    for j in range(1, n + 1):
      u = f"block{i}/unit{j:02d}/"
      stride = 2 if (i > 1 and j == 1) else 1
      residual = x
      x = relu(gn(x, u + "gn1"))
      nout = p[u + "conv3/kernel"].shape[-1]
      if x.shape[-1] != nout or stride != 1:
        residual = std_conv(x, p[u + "conv_proj/kernel"], stride, 0)
      x = relu(gn(std_conv(x, p[u + "conv1/kernel"], 1, 0), u + "gn2"))
      x = relu(gn(std_conv(x, p[u + "conv2/kernel"], stride, 1), u + "gn3"))
      x = std_conv(x, p[u + "conv3/kernel"], 1, 0) + residual
  x = relu(gn(x, "norm-pre-head")).mean(axis=(1, 2))
  return x @ p["head/kernel"] + p["head/bias"]


def big_vision_load_params(path):
  """The flat params big_vision's `utils.load_params` finds in an `.npz`."""
  with open(path, "rb") as f:
    npz = np.load(io.BytesIO(f.read()), allow_pickle=False)
  flat = {}
  for k in npz.files:
    v = npz[k]
    if v.dtype.type is np.void:  # utils.recover_dtype
      assert v.itemsize == 2
      v = v.view(ml_dtypes.bfloat16)
    flat[k] = v
  for prefix in ("params/", "opt/target/"):  # checkpoint["params"], ["opt"]["target"]
    if any(k.startswith(prefix) for k in flat):
      return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  return flat
