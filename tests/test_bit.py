"""BiT ResNetV2: shapes, numerics against an independent numpy forward, npz interop."""

import logging
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_distill.models import bit


def _count(model, res=224):
  p = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, res, res, 3)))
  return sum(x.size for x in jax.tree.leaves(p["params"]))


@pytest.mark.parametrize("depth,width,expected", [
    (50, 1, 25_549_352),     # Public BiT-M-R50x1 (1,000 classes).
    (152, 2, 236_335_208),   # Public BiT-M-R152x2 (1,000 classes).
])
def test_parameter_counts_match_public_models(depth, width, expected):
  assert _count(bit.Model(num_classes=1000, depth=depth, width=width)) == expected


def test_all_depths_build():
  counts = [_count(bit.Model(num_classes=10, depth=d, width=1)) for d in (26, 50, 101, 152)]
  assert counts == sorted(counts) and len(set(counts)) == 4


def test_bad_depth_is_clear():
  with pytest.raises(ValueError, match="depth must be one of"):
    _count(bit.Model(num_classes=10, depth=34))


@pytest.fixture(scope="module")
def tiny():
  model = bit.Model(num_classes=7, depth=26, width=0.5)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  params = model.init(jax.random.key(0), x)["params"]
  # A non-zero head, so that the logits depend on every layer.
  params["head"]["kernel"] = jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape)
  params["head"]["bias"] = jnp.arange(7.0)
  # Non-trivial GroupNorm parameters, so a gamma/beta swap would show.
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v * 1.5 + 0.1 if p[-1].key in ("scale", "bias") and p[0].key != "head" else v,
      params)
  return model, params, np.asarray(x)


# -- An independent forward pass written from the BiT release's description. --

def _np_conv(x, w, stride, pad):
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


def _np_std(w):
  m = w.mean(axis=(0, 1, 2), keepdims=True)
  v = w.var(axis=(0, 1, 2), keepdims=True)
  return (w - m) / np.sqrt(v + 1e-10)


def _np_gn(x, gamma, beta):
  b, h, w, c = x.shape
  g = min(32, c)
  xg = x.reshape(b, h, w, g, c // g)
  m = xg.mean(axis=(1, 2, 4), keepdims=True)
  v = xg.var(axis=(1, 2, 4), keepdims=True)
  return ((xg - m) / np.sqrt(v + 1e-5)).reshape(b, h, w, c) * gamma + beta


def _np_forward(a, x, pool_pad_value=0.0):
  relu = lambda t: np.maximum(t, 0)
  x = _np_conv(x.astype(np.float64), _np_std(a["resnet/root_block/standardized_conv2d/kernel"]), 2, 3)
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=pool_pad_value)
  b, h, w, c = x.shape
  oh, ow = (h - 3) // 2 + 1, (w - 3) // 2 + 1
  x = np.max([x[:, i:i + 2 * oh:2, j:j + 2 * ow:2] for i in range(3) for j in range(3)], axis=0)
  for blk in range(1, 5):
    units = sorted({k.split("/")[2] for k in a if k.startswith(f"resnet/block{blk}/")})
    for u in units:
      p = f"resnet/block{blk}/{u}/"
      stride = 2 if blk > 1 and u == "unit01" else 1
      out = relu(_np_gn(x, a[p + "a/group_norm/gamma"], a[p + "a/group_norm/beta"]))
      res = x
      if p + "a/proj/standardized_conv2d/kernel" in a:
        res = _np_conv(out, _np_std(a[p + "a/proj/standardized_conv2d/kernel"]), stride, 0)
      out = _np_conv(out, _np_std(a[p + "a/standardized_conv2d/kernel"]), 1, 0)
      out = relu(_np_gn(out, a[p + "b/group_norm/gamma"], a[p + "b/group_norm/beta"]))
      out = _np_conv(out, _np_std(a[p + "b/standardized_conv2d/kernel"]), stride, 1)
      out = relu(_np_gn(out, a[p + "c/group_norm/gamma"], a[p + "c/group_norm/beta"]))
      out = _np_conv(out, _np_std(a[p + "c/standardized_conv2d/kernel"]), 1, 0)
      x = out + res
  x = relu(_np_gn(x, a["resnet/group_norm/gamma"], a["resnet/group_norm/beta"]))
  x = x.mean(axis=(1, 2))
  k = a["resnet/head/conv2d/kernel"]
  return x @ k.reshape(k.shape[2:]) + a["resnet/head/conv2d/bias"]


def test_forward_matches_reference_built_from_bit_keys(tiny):
  model, params, x = tiny
  logits, out = model.apply({"params": params}, x)
  arrays = bit.to_bit_arrays(params)
  ref = _np_forward(arrays, x)
  np.testing.assert_allclose(np.asarray(logits), ref, rtol=2e-4, atol=2e-4)
  assert out["pre_logits"].shape == (2, 1024)
  # The max-pool's zero padding is part of the released numerics: a -inf
  # padded pool gives measurably different logits, which the model must not.
  ref_inf = _np_forward(arrays, x, pool_pad_value=-np.inf)
  assert np.abs(ref_inf - ref).max() > 50 * np.abs(np.asarray(logits) - ref).max()


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny):
  model, params, x = tiny
  bf = bit.Model(num_classes=7, depth=26, width=0.5, dtype=jnp.bfloat16)
  fresh = bf.init(jax.random.key(0), x)["params"]
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(fresh))
  rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
  l32, _ = model.apply({"params": params}, x)
  l16, _ = bf.apply({"params": params}, x)
  assert l16.dtype == jnp.float32
  # The tolerance is relative to how sensitive this random network is anyway:
  # rounding only its input to bfloat16 moves the float32 logits by `noise`.
  # Computing in bfloat16 may cost at most a few times that (measured: ~3x).
  noise = rel(l32, model.apply({"params": params}, x.astype(jnp.bfloat16).astype(np.float32))[0])
  assert rel(l32, l16) < 5 * noise


def test_save_load_roundtrip_is_exact(tiny, tmp_path):
  model, params, x = tiny
  path = str(tmp_path / "student.npz")
  bit.save(params, path)
  with np.load(path, allow_pickle=False) as f:
    assert f["resnet/head/conv2d/kernel"].shape == (1, 1, 1024, 7)
    assert "resnet/block1/unit01/a/proj/standardized_conv2d/kernel" in f.files
  fresh = model.init(jax.random.key(9), x)["params"]
  loaded = bit.load(fresh, path)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               loaded, params)
  np.testing.assert_array_equal(model.apply({"params": loaded}, x)[0],
                                model.apply({"params": params}, x)[0])


def test_save_load_through_tf_gfile(tiny):
  # ram:// goes through tf.io.gfile, the same path as gs://.
  _, params, _ = tiny
  bit.save(params, "ram://bit_test/ckpt.npz")
  loaded = bit.load(params, "ram://bit_test/ckpt.npz")
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), loaded, params)))


def test_head_of_other_size_is_reinitialized(tiny, tmp_path, caplog):
  _, params, x = tiny
  path = str(tmp_path / "bitm.npz")
  bit.save(params, path)  # 7 classes.
  other = bit.Model(num_classes=3, depth=26, width=0.5)
  init = other.init(jax.random.key(0), x)["params"]
  with caplog.at_level(logging.INFO):
    loaded = bit.load(init, path)
  assert any("head re-initialized" in r.message for r in caplog.records)
  assert loaded["head"]["kernel"].shape == (1024, 3)
  assert not np.any(loaded["head"]["kernel"]) and not np.any(loaded["head"]["bias"])
  for k in params:
    if k != "head":
      jax.tree.map(np.testing.assert_array_equal, loaded[k], params[k])


def _write(path, arrays):
  np.savez(path, **arrays)
  return str(path)


def test_malformed_files_give_clear_errors(tiny, tmp_path):
  model, params, x = tiny
  good = bit.to_bit_arrays(params)
  conv = "resnet/block2/unit01/b/standardized_conv2d/kernel"

  missing = dict(good)
  del missing[conv]
  with pytest.raises(ValueError, match=f"(?s)1 missing.*{conv}: missing"):
    bit.load(params, _write(tmp_path / "missing.npz", missing))

  extra = dict(good, **{"resnet/block9/unit01/a/group_norm/gamma": np.ones(3)})
  with pytest.raises(ValueError, match="block9.*not in the model"):
    bit.load(params, _write(tmp_path / "extra.npz", extra))

  shaped = dict(good, **{conv: np.zeros((3, 3, 64, 65), np.float32)})
  with pytest.raises(ValueError, match=r"(?s)1 mis-shaped.*file \(3, 3, 64, 65\), model \(3, 3, 64, 64\)"):
    bit.load(params, _write(tmp_path / "shaped.npz", shaped))

  # An architecture mismatch (an R50 file for an R26 model) names arrays.
  r50 = bit.Model(num_classes=7, depth=50, width=0.5).init(jax.random.key(0), x)["params"]
  with pytest.raises(ValueError, match="depth/width/num_classes"):
    bit.load(params, _write(tmp_path / "r50.npz", bit.to_bit_arrays(r50)))

  pkl = tmp_path / "weights.pkl"
  pkl.write_bytes(pickle.dumps(good))
  with pytest.raises(ValueError, match="not an .npz"):
    bit.load(params, str(pkl))

  obj = tmp_path / "obj.npz"
  np.savez(obj, a=np.array([{"x": 1}], dtype=object))
  with pytest.raises(ValueError, match="pickled"):
    bit.load(params, str(obj))

  with pytest.raises(FileNotFoundError, match="does not exist"):
    bit.load(params, str(tmp_path / "nope.npz"))
