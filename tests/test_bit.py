"""BiT ResNetV2: shapes, numerics against independent numpy forwards, npz interop, freeze."""

import logging
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_distill import errors
from big_distill.models import bit
from tests import bit_reference


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


def test_forward_matches_reference_built_from_bit_keys(tiny):
  model, params, x = tiny
  logits, out = model.apply({"params": params}, x)
  arrays = bit.to_bit_arrays(params)
  ref = bit_reference.bit_release_forward(arrays, x)
  np.testing.assert_allclose(np.asarray(logits), ref, rtol=2e-4, atol=2e-4)
  assert out["pre_logits"].shape == (2, 1024)
  # The max-pool's zero padding is part of the released numerics: a -inf
  # padded pool gives measurably different logits, which the model must not.
  ref_inf = bit_reference.bit_release_forward(arrays, x, pool_pad_value=-np.inf)
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


def test_the_model_contract_on_variables_dicts(tiny, bv_tiny, tmp_path, caplog):
  """load/save/freeze take a flax variables dict too, and give one back; a
  head of another class count keeps the template's on "reinit"; `model=`
  tells load the stem_pool_pad (as the deprecated `stem_pool_pad=`)."""
  model, params, x = tiny
  assert bit.LAYOUTS == ("bit", "big_vision")
  path = str(tmp_path / "student.npz")
  bit.save({"params": params}, path)
  bit.save(params, str(tmp_path / "bare.npz"))
  assert (tmp_path / "bare.npz").read_bytes() == (tmp_path / "student.npz").read_bytes()
  with pytest.raises(ValueError, match="layout='flat'"):
    bit.save(params, path, layout="flat")
  loaded = bit.load({"params": _template(model, (32, 32))}, path)
  assert set(loaded) == {"params"}
  _assert_same_params(loaded["params"], params)
  # Another class count: the template's head (here nonzero) is kept.
  other = bit.Model(num_classes=3, depth=26, width=0.5)
  template = _template(other, (32, 32))
  template["head"]["bias"] = np.arange(3, dtype=np.float32)
  loaded = bit.load({"params": template}, path)["params"]
  np.testing.assert_array_equal(loaded["head"]["bias"], np.arange(3))
  _assert_same_params(loaded["block1_unit01"], params["block1_unit01"])
  # freeze: the frozen model alone, or with its variables in their own form.
  frozen_model, none = bit.freeze(model, None)
  assert frozen_model.kernels_standardized and none is None
  _, frozen = bit.freeze(model, {"params": jax.device_get(params)})
  assert set(frozen) == {"params"}
  logits = np.asarray(model.apply({"params": params}, x)[0])
  frozen_logits = np.asarray(frozen_model.apply(frozen, x)[0])
  # Relative to the logits' scale (up to ~70 here): op-by-op float32 rounds
  # differently on another CPU (6.6e-6 measured on an AMD EPYC).
  max_rel = np.abs(frozen_logits - logits).max() / np.abs(logits).max()
  assert max_rel < 3e-5, max_rel
  # A big_vision file into a "zeros" model warns, told by `model=`.
  p, bv_model, *_ = bv_tiny
  np.savez(tmp_path / "bv.npz", **p)
  zeros_model = bv_model.clone(stem_pool_pad="zeros")
  for m, n in ((zeros_model, 1), (bv_model, 0)):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      bit.load(_template(m, (32, 32)), str(tmp_path / "bv.npz"), model=m)
    assert sum(r.levelno >= logging.WARNING for r in caplog.records) == n


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
  with pytest.raises(ValueError, match=f"(?s)1 missing.*{conv}: missing") as e:
    bit.load(params, _write(tmp_path / "missing.npz", missing))
  assert isinstance(e.value, errors.CheckpointError)

  extra = dict(good, **{"resnet/block9/unit01/a/group_norm/gamma": np.ones(3)})
  with pytest.raises(ValueError, match="block9.*not in the model") as e:
    bit.load(params, _write(tmp_path / "extra.npz", extra))
  assert isinstance(e.value, errors.CheckpointError)

  shaped = dict(good, **{conv: np.zeros((3, 3, 64, 65), np.float32)})
  with pytest.raises(ValueError, match=r"(?s)1 mis-shaped.*file \(3, 3, 64, 65\), model \(3, 3, 64, 64\)") as e:
    bit.load(params, _write(tmp_path / "shaped.npz", shaped))
  assert isinstance(e.value, errors.CheckpointError)

  # An architecture mismatch (an R50 file for an R26 model) names arrays.
  r50 = bit.Model(num_classes=7, depth=50, width=0.5).init(jax.random.key(0), x)["params"]
  with pytest.raises(ValueError, match="depth/width/num_classes") as e:
    bit.load(params, _write(tmp_path / "r50.npz", bit.to_bit_arrays(r50)))
  assert isinstance(e.value, errors.CheckpointError)

  pkl = tmp_path / "weights.pkl"
  pkl.write_bytes(pickle.dumps(good))
  with pytest.raises(ValueError, match="not an .npz") as e:
    bit.load(params, str(pkl))
  assert isinstance(e.value, errors.CheckpointError)

  obj = tmp_path / "obj.npz"
  np.savez(obj, a=np.array([{"x": 1}], dtype=object))
  with pytest.raises(ValueError, match="pickled") as e:
    bit.load(params, str(obj))
  assert isinstance(e.value, errors.CheckpointError)

  with pytest.raises(FileNotFoundError, match="does not exist") as e:
    bit.load(params, str(tmp_path / "nope.npz"))
  assert isinstance(e.value, errors.CheckpointError)


# -- big_vision's bit_paper: numerics and its checkpoint layout. ---------------

def _template(model, hw):
  shape = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *hw, 3)))["params"]
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shape)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _assert_same_params(a, b):
  jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)


# R26x1: every GroupNorm has 32 groups of 2 or more channels. R50x0.5: the
# stem's 32 channels make groups of 1 there, of 4..64 elsewhere. Both
# non-square, as a transposed image would go unnoticed on a square one.
BIT_PAPER_CASES = {"R26x1_24x40": (26, 1.0, (24, 40)), "R50x0.5_40x24": (50, 0.5, (40, 24))}


@pytest.fixture(scope="module", params=list(BIT_PAPER_CASES))
def bit_paper_case(request, tmp_path_factory):
  depth, width, hw = BIT_PAPER_CASES[request.param]
  p = bit_reference.random_bit_paper_params(depth, width, 5, seed=depth)
  x = np.random.default_rng(0).standard_normal((2, *hw, 3)).astype(np.float32)
  folder = tmp_path_factory.mktemp(request.param)
  np.savez(folder / "bv.npz", **p)
  np.savez(folder / "bit.npz", **bit_reference.bit_paper_to_bit_release(p))
  models = {pad: bit.Model(num_classes=5, depth=depth, width=width, stem_pool_pad=pad)
            for pad in bit.STEM_POOL_PADS}
  return dict(depth=depth, width=width, hw=hw, p=p, x=x, folder=folder, models=models)


def test_neg_inf_model_matches_big_vision_bit_paper(bit_paper_case):
  c = bit_paper_case
  ref = bit_reference.bit_paper_forward(c["p"], c["x"], c["depth"], c["width"])
  template = _template(c["models"]["zeros"], c["hw"])
  from_bv = bit.load(template, str(c["folder"] / "bv.npz"), stem_pool_pad="neg_inf")
  from_bit = bit.load(template, str(c["folder"] / "bit.npz"))
  # The same weights in either layout load to the same params, bit for bit.
  _assert_same_params(from_bv, from_bit)
  logits = {pad: jax.jit(m.apply)({"params": from_bv}, c["x"])[0]
            for pad, m in c["models"].items()}
  err = _rel(logits["neg_inf"], ref)
  assert err < 1e-5, err  # float32 rounding (measured: 4e-6 R26x1, 7e-6 R50x0.5).
  # The BiT release's zero padding gives measurably other logits on these
  # weights (measured: 2e-2 and 5e-2), and matches the BiT release's numerics.
  assert _rel(logits["zeros"], ref) > 100 * err
  ref_zeros = bit_reference.bit_release_forward(
      bit_reference.bit_paper_to_bit_release(c["p"]), c["x"], pool_pad_value=0.0)
  assert _rel(logits["zeros"], ref_zeros) < 1e-5


@pytest.fixture(scope="module")
def bv_tiny(tmp_path_factory):
  """Random R26x0.5 weights (7 classes) in bit_paper's layout, its model, input, logits."""
  p = bit_reference.random_bit_paper_params(26, 0.5, 7, seed=3)
  model = bit.Model(num_classes=7, depth=26, width=0.5, stem_pool_pad="neg_inf")
  x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
  return p, model, x, jax.jit(model.apply), tmp_path_factory.mktemp("bv_tiny")


def test_every_big_vision_file_form_loads_like_the_bit_file(bv_tiny):
  p, model, x, apply, folder = bv_tiny
  template = _template(model, (32, 32))
  bf16 = {k: v.astype(jnp.bfloat16) for k, v in p.items()}
  optax_state = {"opt/0/mu/head/kernel": np.ones((1024, 7), np.float32),
                 "opt/1/count": np.int32(5)}
  flax_optim_state = {"opt/state/step": np.int32(5),
                      "opt/state/param_states/head/kernel/grad_ema": np.ones((1024, 7))}
  forms = {
      "bare": (p, p),
      "params": ({**{f"params/{k}": v for k, v in p.items()}, **optax_state}, p),
      "opt_target": ({**{f"opt/target/{k}": v for k, v in p.items()}, **flax_optim_state}, p),
      "bfloat16": (bf16, {k: v.astype(np.float32) for k, v in bf16.items()}),
  }
  np.savez(folder / "bf16.npz", **bf16)
  with np.load(folder / "bf16.npz") as f:  # The case it is about: numpy's 2-byte void.
    assert f["head/kernel"].dtype.str == "|V2"
  logits = {}
  for name, (contents, same_weights) in forms.items():
    np.savez(folder / f"{name}.npz", **contents)
    np.savez(folder / f"{name}_bit.npz", **bit_reference.bit_paper_to_bit_release(same_weights))
    loaded = bit.load(template, str(folder / f"{name}.npz"))
    expected = bit.load(template, str(folder / f"{name}_bit.npz"))
    assert all(v.dtype == np.float32 for v in jax.tree.leaves(loaded))
    _assert_same_params(loaded, expected)
    logits[name] = np.asarray(apply({"params": loaded}, x)[0])
    np.testing.assert_array_equal(logits[name], apply({"params": expected}, x)[0])
  assert not np.array_equal(logits["bfloat16"], logits["bare"])  # It was rounded.


def test_save_in_each_layout_loads_back_bitwise(tiny, tmp_path):
  model, params, x = tiny
  for layout in bit.LAYOUTS:
    path = str(tmp_path / f"{layout}.npz")
    bit.save(params, path, layout=layout)
    fresh = model.init(jax.random.key(9), x)["params"]
    _assert_same_params(bit.load(fresh, path), params)
  # A ram:// file (tf.io.gfile, as gs://) in big_vision's layout.
  bit.save(params, "ram://bit_test/bv.npz", layout="big_vision")
  _assert_same_params(bit.load(params, "ram://bit_test/bv.npz"), params)
  assert not any(p.endswith(".tmp") for p in map(str, tmp_path.iterdir()))
  with pytest.raises(ValueError, match="layout='timm'"):
    bit.save(params, str(tmp_path / "x.npz"), layout="timm")


def test_saved_big_vision_file_is_what_bit_paper_reads(tiny, bv_tiny, tmp_path):
  # Read as big_vision's utils.load_params reads it, then run as bit_paper
  # runs it (which checks its names and shapes against bit_paper's init).
  _, params, x = tiny
  _, _, _, neg_inf_apply, _ = bv_tiny  # The same architecture, stem_pool_pad="neg_inf".
  path = str(tmp_path / "student.npz")
  bit.save(params, path, layout="big_vision")
  flat = bit_reference.big_vision_load_params(path)
  assert flat["block1/unit01/gn1/scale"].shape == (1, 1, 1, 32)
  assert flat["head/kernel"].shape == (1024, 7) and flat["head/bias"].shape == (7,)
  ref = bit_reference.bit_paper_forward(flat, x, depth=26, width=0.5)
  assert _rel(neg_inf_apply({"params": params}, x)[0], ref) < 1e-5


def test_head_mismatch_error_or_reinit(tiny, bv_tiny, tmp_path, caplog):
  _, params, x = tiny
  other = bit.Model(num_classes=3, depth=26, width=0.5)
  template = _template(other, (32, 32))
  p, *_ = bv_tiny
  files = {"bit": tmp_path / "bit.npz", "big_vision": tmp_path / "bv.npz"}
  bit.save(params, str(files["bit"]))
  np.savez(files["big_vision"], **p)
  for layout, path in files.items():
    with pytest.raises(errors.CheckpointError,
                       match=r"head for 7 classes, the model has num_classes=3.*Fine-tune"):
      bit.load(template, str(path), head_mismatch="error")
    with caplog.at_level(logging.INFO):
      loaded = bit.load(template, str(path))  # "reinit", the default.
    assert any("head re-initialized" in r.message for r in caplog.records), layout
    assert not np.any(loaded["head"]["kernel"]) and not np.any(loaded["head"]["bias"])
    assert loaded["head"]["kernel"].shape == (1024, 3)
  headless = {k: v for k, v in p.items() if not k.startswith("head/")}
  np.savez(tmp_path / "headless.npz", **headless)
  with pytest.raises(errors.CheckpointError, match="has no classifier head"):
    bit.load(template, str(tmp_path / "headless.npz"), head_mismatch="error")
  assert not np.any(bit.load(template, str(tmp_path / "headless.npz"))["head"]["kernel"])
  with pytest.raises(ValueError, match="head_mismatch='zero'"):
    bit.load(template, str(files["bit"]), head_mismatch="zero")


def test_big_vision_file_into_zeros_model_warns_once(bv_tiny, tmp_path, caplog):
  p, model, *_ = bv_tiny
  template = _template(model, (32, 32))
  np.savez(tmp_path / "bv.npz", **p)
  np.savez(tmp_path / "bit.npz", **bit_reference.bit_paper_to_bit_release(p))
  cases = [("bv.npz", "zeros", 1), ("bv.npz", "neg_inf", 0), ("bv.npz", None, 0),
           ("bit.npz", "zeros", 0)]
  for name, pad, n in cases:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      bit.load(template, str(tmp_path / name), stem_pool_pad=pad)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == n, (name, pad, warnings)
    if n:
      assert "stem_pool_pad='neg_inf'" in warnings[0]
      assert "--config.t1.stem_pool_pad=neg_inf" in warnings[0]


def test_malformed_big_vision_files_give_clear_errors(tiny, tmp_path):
  _, params, _ = tiny
  good = bit.to_arrays(params, "big_vision")
  # GroupNorm parameters stored flat, as (C,), are the same parameters.
  flat_gn = {k: v.reshape(-1) if "/gn" in k else v for k, v in good.items()}
  _assert_same_params(bit.load(params, _write(tmp_path / "flat_gn.npz", flat_gn)), params)

  def refused(arrays, pattern, name):
    with pytest.raises(errors.CheckpointError, match=pattern) as e:
      bit.load(params, _write(tmp_path / f"{name}.npz", arrays))
    assert isinstance(e.value, ValueError)
    return str(e.value)

  gn, proj = "block1/unit01/gn1/scale", "block1/unit01/conv_proj/kernel"
  msg = refused(dict(good, **{gn: np.ones((1, 1, 1, 33), np.float32)}),
                r"(?s)big_vision layout.*1 mis-shaped", "shaped")
  assert f"first mismatch first:\n  {gn}: file (1, 1, 1, 33), model (1, 1, 1, 32)" in msg
  refused({k: v for k, v in good.items() if k != proj}, f"(?s)1 missing.*{proj}: missing",
          "missing")
  refused(dict(good, **{"block5/unit01/conv1/kernel": np.ones((1, 1, 2, 2))}),
          "block5/unit01/conv1/kernel: in the file .* not in the model", "extra")
  refused({"encoder/layer0/kernel": np.ones(3)}, "neither the BiT release layout", "other")
  refused(dict(good, **{gn: np.zeros((1, 1, 1, 32), "V4")}), r"raw dtype \|V4", "void")


# -- A lean frozen teacher. ------------------------------------------------------

def _kernel_reductions(compiled, kernel_shapes) -> int:
  """How many reduce ops of the optimized HLO read a kernel-shaped array."""
  text = compiled.as_text()
  shapes = {name: tuple(int(d) for d in dims.split(",") if d)
            for name, dims in re.findall(r"%(\S+) = \w+\[([\d,]*)\]", text)}
  return sum(shapes.get(m[1]) in kernel_shapes for m in re.finditer(r" reduce\(%([^,\s)]+)", text))


def test_freeze_keeps_the_logits_and_drops_the_standardization(tiny):
  model, params, x = tiny
  host = jax.device_get(params)
  frozen_model, frozen = bit.freeze(model, host)
  assert frozen_model.kernels_standardized and not model.kernels_standardized
  kernels = [(p, v) for p, v in bit._leaves(frozen) if p[-1] == "kernel" and p[0] != "head"]
  assert len(kernels) == 1 + 8 * 3 + 4  # Root, 3 per unit, 4 projections.
  for path, k in kernels:
    assert isinstance(k, np.ndarray) and k.dtype == np.float32, path
    np.testing.assert_allclose(k.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(k.std(axis=(0, 1, 2)), 1, atol=1e-5)
  for path, v in bit._leaves(frozen):  # GroupNorm and head: untouched.
    if path[-1] != "kernel" or path[0] == "head":
      np.testing.assert_array_equal(v, _get(host, path))

  compiled = jax.jit(model.apply).lower({"params": params}, x).compile()
  frozen_compiled = jax.jit(frozen_model.apply).lower({"params": frozen}, x).compile()
  logits = np.asarray(compiled({"params": params}, x)[0])
  frozen_logits = np.asarray(frozen_compiled({"params": frozen}, x)[0])
  max_rel = np.abs(frozen_logits - logits).max() / np.abs(logits).max()
  # Float32 rounding, measured on this forward: how far the logits move when
  # every frozen weight moves by one ulp, up or down at random. Freezing rounds
  # each kernel once, so it may move them no further. (Measured on CPU: freeze
  # 0 with XLA's default emitters, 3.0e-6 with the suite's elemental emitters;
  # one-ulp nudges 5.6e-6 to 9.2e-6.)
  rng = np.random.default_rng(0)
  nudged = jax.tree.map(
      lambda v: np.where(rng.random(v.shape) < 0.5, np.nextafter(v, np.inf), np.nextafter(v, -np.inf)),
      frozen)
  nudged_logits = np.asarray(frozen_compiled({"params": nudged}, x)[0])
  one_ulp = np.abs(nudged_logits - frozen_logits).max() / np.abs(logits).max()
  assert 0 < one_ulp < 1e-4, one_ulp  # The yardstick itself is a rounding-sized move.
  assert max_rel <= one_ulp, (max_rel, one_ulp)

  # The compiled forward no longer standardizes: fewer FLOPs, at least one
  # per kernel element fewer, and no reduction over a kernel-shaped array.
  kernel_shapes = {tuple(k.shape) for _, k in kernels}
  flops = compiled.cost_analysis()["flops"]
  frozen_flops = frozen_compiled.cost_analysis()["flops"]
  assert flops - frozen_flops >= sum(k.size for _, k in kernels), (flops, frozen_flops)
  assert _kernel_reductions(compiled, kernel_shapes) >= len(kernels)  # What it detects.
  assert _kernel_reductions(frozen_compiled, kernel_shapes) == 0

  # Device arrays stay device arrays; a frozen model is not frozen twice.
  _, on_device = bit.freeze(model, params)
  assert isinstance(on_device["root_conv"]["kernel"], jax.Array)
  np.testing.assert_allclose(on_device["root_conv"]["kernel"], frozen["root_conv"]["kernel"],
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="already frozen"):
    bit.freeze(frozen_model, frozen)


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def test_the_trainer_runs_teachers_frozen_and_students_not(tmp_path):
  """setup builds BiT teachers with kernels standardized once at load (the
  step has no per-step standardization of teacher kernels), students as usual."""
  from big_distill import model_set, plan, weights  # pylint: disable=g-import-not-at-top
  from tests import tiny_config  # pylint: disable=g-import-not-at-top
  teacher = tiny_config.write_teacher(tmp_path / "t.npz")
  config = tiny_config.get_config(f"teacher={teacher}")
  models = model_set.build_models(config)
  assert models.teachers["t1"].kernels_standardized
  assert not models.student.kernels_standardized
  params = weights.load_teachers(config, models, plan.make_mesh(config))["t1"]["params"]
  kernel = np.asarray(params["block1_unit01"]["conv_a"]["kernel"], np.float64)
  axes = tuple(range(kernel.ndim - 1))  # Standardized once: mean 0, variance 1.
  np.testing.assert_allclose(kernel.mean(axes), 0, atol=1e-5)
  np.testing.assert_allclose(kernel.var(axes), 1, rtol=1e-4)
