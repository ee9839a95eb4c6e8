"""models/vit.py: numerics against a plain-numpy ViT, checkpoints in every big_vision layout."""

import io

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import scipy.ndimage

from big_distill import benchmark
from big_distill import errors
from big_distill import feeding
from big_distill import train
from big_distill import weights
from big_distill.configs import common
from big_distill.models import vit
from tests import helpers
from tests import vit_reference
from tests.helpers import tfds_metadata  # pylint: disable=unused-import  (fixture)

TINY = dict(variant=None, width=16, depth=2, mlp_dim=32, num_heads=2, patch_size=4)
RES = 16


def tiny(num_classes=5, **kw):
  return vit.Model(num_classes, **{**TINY, **kw})


def shapes(model, res=RES):
  images = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)


def random_params(model, res=RES, seed=0):
  """Random numpy params of `model`: nothing zero (the head included), nothing compiled."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    noise = rng.normal(0, 1, s.shape).astype(np.float32)
    name = path[-1].key
    return 1 + 0.1 * noise if name == "scale" else (0.1 if name == "bias" else 0.3) * noise
  return jax.tree_util.tree_map_with_path(leaf, shapes(model, res)["params"])


def flat(params):
  return vit.to_arrays(params)


def images(n=2, res=RES, seed=1):
  return np.random.default_rng(seed).uniform(-1, 1, (n, res, res, 3)).astype(np.float32)


def save_arrays(path, arrays):
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  path.write_bytes(buf.getvalue())
  return str(path)


def assert_trees_equal(a, b, atol=0.0):
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_allclose(fa[k], fb[k], atol=atol, rtol=0, err_msg=k)


# ---- Numerics ----------------------------------------------------------------


@pytest.mark.parametrize("pool_type,posemb,extra", [
    ("gap", "learn", {}), ("gap", "sincos2d", {"scan": True}),
    ("tok", "learn", {}), ("tok", "sincos2d", {"rep_size": 8}),
    ("map", "learn", {"scan": True}), ("map", "sincos2d", {}),
    ("0", "learn", {"rep_size": True}), ("0", "sincos2d", {"patch_size": (4, 2)}),  # (h, w) patches.
])
def test_logits_match_the_paper_reference(pool_type, posemb, extra):
  model = tiny(pool_type=pool_type, posemb=posemb, **extra)
  params = random_params(model)
  x = images()
  # train=True: no dropout, no rngs; the logits are still the reference's.
  logits, out = jax.jit(model.apply, static_argnames="train")({"params": params}, x, train=True)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 5)
  assert out["pre_logits"].shape[0] == 2
  ref = vit_reference.forward(flat(params), x, patch=model.sizes()["patch_size"], depth=2,
                              pool_type=pool_type, posemb=posemb, scan=extra.get("scan", False))
  rel = np.max(np.abs(np.asarray(logits, np.float64) - ref)) / np.max(np.abs(ref))
  assert rel < 1e-5, rel
  assert np.max(np.abs(ref)) > 0.1  # The logits are not trivially small.


def test_bfloat16_compute_with_float32_params_is_close():
  model = tiny(pool_type="map")
  params = random_params(model)
  x = images()
  ref, _ = jax.jit(model.apply)({"params": params}, x)
  low = model.clone(dtype=jnp.bfloat16)
  logits, out = jax.jit(low.apply)({"params": params}, x)
  assert logits.dtype == jnp.float32 and out["encoded"].dtype == jnp.bfloat16
  assert jax.tree.leaves(shapes(low))[0].dtype == jnp.float32  # Params stay float32.
  err = np.max(np.abs(np.asarray(logits) - np.asarray(ref))) / np.max(np.abs(np.asarray(ref)))
  assert 0 < err < 0.05, err


def test_remat_keeps_logits_and_gradients(tmp_path):
  model = tiny(pool_type="tok")
  params = random_params(model)
  x = images()

  def loss(m, p):
    return jax.jit(jax.value_and_grad(lambda p: m.apply({"params": p}, x)[0].sum()))(p)
  (v0, g0), (v1, g1) = loss(model, params), loss(model.clone(remat=True), params)
  np.testing.assert_allclose(v0, v1, rtol=1e-6)
  assert_trees_equal(g0, g1, atol=1e-5)
  assert np.max(np.abs(g0["embedding"]["kernel"])) > 0
  scanned = model.clone(remat=True, scan=True)
  vit.save(params, str(tmp_path / "p.npz"))
  v2, _ = loss(scanned, vit.load(shapes(scanned)["params"], str(tmp_path / "p.npz")))
  np.testing.assert_allclose(v0, v2, rtol=1e-5)


def test_contract_defaults_and_bad_kwargs():
  model = vit.Model(num_classes=3)  # Every family kwarg has a default: a B/16.
  assert model.sizes() == dict(patch_size=(16, 16), width=768, depth=12, mlp_dim=3072,
                               num_heads=12)
  assert vit.Model(3, variant="So400m/14").sizes() == dict(
      patch_size=(14, 14), width=1152, depth=27, mlp_dim=4304, num_heads=16)
  assert vit.Model(3, variant="B/16", patch_size=8, depth=2).sizes()["patch_size"] == (8, 8)
  for bad in (dict(variant="Q/16"), dict(pool_type="cls"), dict(posemb="rope"),
              dict(width=10, num_heads=3)):
    with pytest.raises(errors.ConfigError):
      vit.Model(3, **bad).sizes()
  with pytest.raises(errors.ConfigError, match="divisible by 4"):
    shapes(tiny(width=18, num_heads=2, posemb="sincos2d"))
  assert vit.freeze(model, {"params": 1}) == (model, {"params": 1})


# ---- Parameter counts of the variant table -----------------------------------


def count(width, depth, mlp, patch, tokens, classes, pool):
  """ViT parameters, counted from the architecture."""
  attn = 4 * (width * width + width)
  mlp_p = width * mlp + mlp + mlp * width + width
  block = 2 * 2 * width + attn + mlp_p
  n = patch * patch * 3 * width + width + tokens * width + depth * block + 2 * width
  n += width * classes + classes
  if pool == "tok":
    n += width
  if pool == "map":
    n += width + attn + 2 * width + mlp_p
  return n


@pytest.mark.parametrize("variant,res,pool,expected", [
    # Ti/S/B/L: timm's vit_*_patch16_224 counts (5,717,416, 22,050,664,
    # 86,567,656, 304,326,632) less one position embedding (timm, like
    # pre-2022 big_vision, keeps one for the class token; big_vision today
    # does not). B/16 with "gap": neither class token nor its embedding.
    ("Ti/16", 224, "tok", 5_717_416 - 192),
    ("S/16", 224, "tok", 22_050_664 - 384),
    ("B/16", 224, "tok", 86_567_656 - 768),
    ("B/16", 224, "gap", 86_567_656 - 2 * 768),
    ("L/16", 224, "tok", 304_326_632 - 1024),
    ("So400m/14", 224, "map", count(1152, 27, 4304, 14, 16 * 16, 1000, "map")),
    ("g-opt/16", 256, "map", count(1536, 40, 6144, 16, 16 * 16, 1000, "map")),
])
def test_variant_sizes(variant, res, pool, expected):
  model = vit.Model(1000, variant=variant, pool_type=pool, scan=variant not in ("Ti/16", "S/16"))
  n = sum(x.size for x in jax.tree.leaves(shapes(model, res)))
  assert n == expected
  s = model.sizes()
  assert n == count(s["width"], s["depth"], s["mlp_dim"], s["patch_size"][0],
                    (res // s["patch_size"][0]) ** 2, 1000, pool)


# ---- Checkpoints -------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
  model = tiny(pool_type="map", rep_size=8)
  params = random_params(model)
  path = str(tmp_path / "vit.npz")
  vit.save({"params": params}, path)
  with np.load(path) as npz:  # big_vision's layout: bare "/"-joined keys, float32.
    assert "MAPHead_0/MultiHeadDotProductAttention_0/query/kernel" in npz.files
    assert "Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias" in npz.files
    assert all(npz[k].dtype == np.float32 for k in npz.files)
  template = shapes(model)
  loaded = vit.load(template, path, head_mismatch="error", model=model)
  assert set(loaded) == {"params"}
  assert_trees_equal(loaded["params"], params)
  bare = vit.load(template["params"], path)
  assert_trees_equal(bare, params)
  assert not list(tmp_path.glob("*.tmp*"))
  with pytest.raises(ValueError):
    vit.save(params, path, layout="timm")


def test_per_layer_file_into_scan_model_and_back(tmp_path):
  per_layer = tiny(pool_type="tok")
  scanned = per_layer.clone(scan=True)
  params = random_params(per_layer)
  vit.save(params, str(tmp_path / "layers.npz"))
  loaded = vit.load(shapes(scanned)["params"], str(tmp_path / "layers.npz"))
  stacked = loaded["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"]
  np.testing.assert_array_equal(stacked, np.stack(
      [params["Transformer"][f"encoderblock_{i}"]["LayerNorm_0"]["scale"] for i in range(2)]))
  x = images()
  a, _ = jax.jit(per_layer.apply)({"params": params}, x)
  b, _ = jax.jit(scanned.apply)({"params": loaded}, x)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  vit.save({"params": loaded}, str(tmp_path / "from_scan.npz"))  # Written per layer.
  with np.load(tmp_path / "from_scan.npz") as npz:
    assert "Transformer/encoderblock_1/LayerNorm_0/scale" in npz.files
    assert not any(k.startswith("Transformer/encoderblock/") for k in npz.files)
  assert_trees_equal(vit.load(shapes(per_layer)["params"], str(tmp_path / "from_scan.npz")),
                     params)
  # A scanned file (as big_vision's scan models save) into the per-layer model.
  scan_file = {k: v for k, v in flat(params).items() if "encoderblock_" not in k}
  for k, v in flat(params).items():
    if k.startswith("Transformer/encoderblock_0/"):
      rest = k.removeprefix("Transformer/encoderblock_0/")
      scan_file[f"Transformer/encoderblock/{rest}"] = np.stack(
          [v, flat(params)[f"Transformer/encoderblock_1/{rest}"]])
  back = vit.load(shapes(per_layer)["params"], save_arrays(tmp_path / "scan.npz", scan_file))
  assert_trees_equal(back, params)


def _pre_linen(key):
  """A linen key as the original ViT release numbers it."""
  return (key.replace("LayerNorm_1", "LayerNorm_2")
          .replace("MultiHeadDotProductAttention_0", "MultiHeadDotProductAttention_1")
          .replace("MlpBlock_0", "MlpBlock_3"))


def test_pre_2022_layouts(tmp_path):
  # The original ViT release: pre-linen numbering, posembed_input, the class
  # token's position embedding combined with the patches', under opt/target/.
  model = tiny(pool_type="tok")
  params = random_params(model)
  arrays = flat(params)
  pe_cls = np.random.default_rng(3).normal(0, 0.3, (1, 1, 16)).astype(np.float32)
  old = {f"opt/target/{_pre_linen(k)}": v for k, v in arrays.items() if k != "pos_embedding"}
  old["opt/target/cls"] = arrays["cls"] - pe_cls
  old["opt/target/Transformer/posembed_input/pos_embedding"] = np.concatenate(
      [pe_cls, arrays["pos_embedding"]], axis=1)
  old["opt/state/step"] = np.zeros(())  # Optimizer state: ignored.
  assert "opt/target/Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel" in old
  loaded = vit.load(shapes(model)["params"], save_arrays(tmp_path / "orig.npz", old))
  assert_trees_equal(loaded, params, atol=1e-6)

  # Pre-2022 big_vision: the position embedding inside the encoder, under params/.
  gap = tiny(pool_type="gap")
  params = random_params(gap)
  arrays = flat(params)
  old = {f"params/{k}": v for k, v in arrays.items() if k != "pos_embedding"}
  old["params/Transformer/pos_embedding"] = arrays["pos_embedding"]
  loaded = vit.load(shapes(gap)["params"], save_arrays(tmp_path / "2021.npz", old))
  assert_trees_equal(loaded, params)

  # A MAP head inlined at the top (ViT-G's development files).
  mapm = tiny(pool_type="map")
  params = random_params(mapm)
  old = {k.removeprefix("MAPHead_0/"): v for k, v in flat(params).items()}
  assert "probe" in old
  loaded = vit.load(shapes(mapm)["params"], save_arrays(tmp_path / "g.npz", old))
  assert_trees_equal(loaded, params)


def test_resample_posemb_is_big_visions(tmp_path):
  model = tiny()
  big = random_params(model, res=24)  # A 6x6 grid; the model runs a 4x4 one.
  assert big["pos_embedding"].shape == (1, 36, 16)
  path = str(tmp_path / "hires.npz")
  vit.save(big, path)
  loaded = vit.load(shapes(model)["params"], path, head_mismatch="error")
  assert loaded["pos_embedding"].shape == (1, 16, 16)
  expected = vit.resample_posemb(big["pos_embedding"], 16)
  np.testing.assert_array_equal(loaded["pos_embedding"], expected)
  # big_vision resamples with scipy's zoom, order 1.
  for old, new in ((6, 4), (4, 7), (3, 3)):
    grid = np.random.default_rng(old).normal(size=(old, old, 5)).astype(np.float32)
    scipy_out = scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1)
    ours = vit.resample_posemb(grid.reshape(1, old * old, 5), new * new)
    np.testing.assert_allclose(ours, scipy_out.reshape(1, new * new, 5), atol=1e-5)


def test_two_tower_sub_tree_and_bfloat16_files(tmp_path):
  model = tiny(pool_type="map")
  params = random_params(model)
  tower = {f"img/{k}": v for k, v in flat(params).items()}
  tower.update({"txt/Encoder_0/encoder_norm/scale": np.ones(8, np.float32),
                "t": np.ones(1, np.float32), "b": np.zeros(1, np.float32)})
  path = save_arrays(tmp_path / "siglip.npz", tower)
  loaded = vit.load(shapes(model)["params"], f"{path}:img")
  assert_trees_equal(loaded, params)
  with pytest.raises(errors.CheckpointError, match="no sub-tree 'image'"):
    vit.load(shapes(model)["params"], f"{path}:image")

  half = {k: v.astype(ml_dtypes.bfloat16) for k, v in flat(params).items()}
  path = save_arrays(tmp_path / "bf16.npz", half)
  with np.load(path) as npz:
    assert npz["head/kernel"].dtype == np.dtype("V2")  # As numpy stores bfloat16.
  loaded = vit.load(shapes(model)["params"], path)
  assert loaded["head"]["kernel"].dtype == np.float32
  assert_trees_equal(loaded, jax.tree.map(
      lambda v: v.astype(ml_dtypes.bfloat16).astype(np.float32), params))


# ---- Bad input ---------------------------------------------------------------


@pytest.mark.parametrize("other,arrays", [
    (dict(width=32), "embedding/kernel"),
    (dict(depth=3), "Transformer/encoderblock_2/"),
    (dict(patch_size=8), "embedding/kernel"),
    (dict(pool_type="tok"), "cls"),
    (dict(pool_type="map"), "MAPHead_0/"),
    (dict(posemb="sincos2d"), "pos_embedding"),
    (dict(rep_size=16), "pre_logits/kernel"),
])
def test_a_file_of_another_model_is_one_clear_error(tmp_path, other, arrays):
  path = str(tmp_path / "other.npz")
  vit.save(random_params(tiny(**other)), path)
  model = tiny()
  with pytest.raises(errors.CheckpointError) as e:
    vit.load(shapes(model), path, model=model)
  msg = str(e.value)
  assert arrays in msg and "pool_type" in msg and "width=16" in msg, msg
  assert "The file looks like" in msg


def test_head_mismatch(tmp_path):
  model = tiny(num_classes=5)
  path = str(tmp_path / "k7.npz")
  vit.save(random_params(tiny(num_classes=7)), path)
  with pytest.raises(errors.CheckpointError, match="head for 7 classes"):
    vit.load(shapes(model), path, head_mismatch="error")
  template = {"params": random_params(model, seed=5)}
  loaded = vit.load(template, path, head_mismatch="reinit")
  np.testing.assert_array_equal(loaded["params"]["head"]["kernel"],
                                template["params"]["head"]["kernel"])
  other = vit.read_npz(path)
  np.testing.assert_array_equal(loaded["params"]["embedding"]["kernel"], other["embedding/kernel"])
  from_shapes = vit.load(shapes(model), path)  # Shapes alone: a zero head.
  assert not np.any(from_shapes["params"]["head"]["kernel"])
  # A file without a head (an image tower).
  headless = {k: v for k, v in other.items() if not k.startswith("head/")}
  path = save_arrays(tmp_path / "tower.npz", headless)
  with pytest.raises(errors.CheckpointError, match="no classifier head"):
    vit.load(shapes(model), path, head_mismatch="error")
  vit.load(shapes(model), path)


def test_unreadable_files_and_zoo_names(tmp_path, monkeypatch):
  with pytest.raises(errors.CheckpointError, match="cannot be read"):
    vit.load(shapes(tiny()), str(tmp_path / "missing.npz"))
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  with pytest.raises(errors.CheckpointError, match="not an .npz"):
    vit.read_npz(str(tmp_path / "bad.npz"))
  # A zoo name resolves to its gs:// file; one that cannot be read says how
  # to copy it (a bucket that does not exist: nothing is downloaded).
  gs = "gs://big-distill-test-no-such-bucket/w.npz"
  monkeypatch.setitem(vit.ZOO, "test tower", vit.ZooEntry(f"{gs}:img", {}, 16, None))
  with pytest.raises(errors.CheckpointError) as e:
    vit.load(shapes(tiny()), "test tower")
  msg = str(e.value)
  assert f"gsutil cp {gs} LOCAL.npz" in msg and "--config.t1_init=LOCAL.npz:img" in msg, msg

  path, entry = vit.resolve("SigLIP2 So400m/14 384")
  assert path == "gs://big_vision/siglip2/siglip2_so400m14_384.npz:img"
  assert entry.kwargs == dict(variant="So400m/14", pool_type="map") and entry.res == 384
  assert vit.resolve("howto-i21k-B/16")[1].classes == 21843
  assert vit.resolve("deit3_B_224_21k")[0] == "gs://big_vision/zoo/deit3/bv_deit_3_base_224_21k.npz"
  assert vit.resolve("SigLIP B/16 224")[0].endswith("webli_en_b16_224_63724782.npz:img")
  assert vit.resolve("/some/file.npz") == ("/some/file.npz", None)
  for name, entry in vit.ZOO.items():  # Every entry builds a model.
    vit.Model(10, **entry.kwargs).sizes()
    assert entry.path.startswith("gs://") and ".npz" in entry.path, name


def test_the_start_up_checks_take_zoo_names(tmp_path, monkeypatch):
  """Init paths accept the zoo's names: the trainer's checks read the file a
  name stands for (the contract's `locate`); BiT and MobileNet name none."""
  import ml_collections as mlc  # pylint: disable=g-import-not-at-top
  from big_distill import checks  # pylint: disable=g-import-not-at-top
  from big_distill.models import bit, mobilenet_v3  # pylint: disable=g-import-not-at-top
  local = str(tmp_path / "tower.npz")
  vit.save(random_params(tiny(), 32), local)
  gs = "gs://big-distill-test-no-such-bucket/w.npz"
  monkeypatch.setitem(vit.ZOO, "test local", vit.ZooEntry(local, {}, 32, None))
  monkeypatch.setitem(vit.ZOO, "test remote", vit.ZooEntry(f"{gs}:img", {}, 32, None))
  assert vit.locate("test local") == local and vit.locate(str(tmp_path)) == str(tmp_path)
  assert bit.locate("test local") == mobilenet_v3.locate("test local") == "test local"
  config = mlc.ConfigDict(dict(teachers=("t1",), t1_name="vit", t1_init="test local",
                               student_name="vit", student_init="test local"))
  checks.check_inits(config)  # Both names stand for the local file.
  config.student_init = "test remote"
  with pytest.raises(errors.CheckpointError) as e:
    checks.check_inits(config)
  assert f"gsutil cp {gs} DIR/" in str(e.value) and "student_init" in str(e.value)
  config.t1_init, config.t1_name = "test local", "bit"  # Not a BiT name: a missing file.
  with pytest.raises(errors.ConfigError, match="checkpoint test local does not exist"):
    checks.check_inits(config)


# ---- Both roles, through the trainer (issue 25) --------------------------------
# Teachers are random models written with vit.save / bit.save; the runs use
# configs/flowers_vit_r50.py:runlocal on TFDS mock data (tests/helpers.py).

TRAIN_VIT = dict(common.LOCAL_VIT, pool_type="gap")  # 16 tokens at 32px.


def write_vit(path, num_classes, res, **kw):
  """A random ViT `.npz` (big_vision's layout) of `common.LOCAL_VIT` (+ kw)."""
  model = vit.Model(num_classes, **{**common.LOCAL_VIT, **kw})
  vit.save(random_params(model, res), str(path))
  return str(path)


def vit_config(student_name, student, teachers, tmp_path):
  """flowers_vit_r50:runlocal with `student` and `teachers` {name: (family, kwargs, res)}."""
  c = helpers.get_config("flowers_vit_r50", "runlocal")
  c.student_name, c.student = student_name, student
  c.teachers = tuple(teachers)
  for t, (family, kwargs, res) in teachers.items():
    if family == "vit":
      c[t] = {**common.LOCAL_VIT, **kwargs}
      c[f"{t}_init"] = write_vit(tmp_path / f"{t}.npz", c.num_classes, res, **kwargs)
    else:
      c[t] = kwargs
      c[f"{t}_init"] = helpers.write_random_bit(tmp_path / f"{t}.npz", c.num_classes, **kwargs)
    c[f"{t}_name"], c[f"{t}_res"] = family, res
  return c


def test_vit_student_distils_an_ensemble_of_a_bit_and_a_vit_teacher(tfds_metadata, tmp_path):
  """One run: a ViT student (remat) at 32px, a ViT teacher at 24px and a BiT
  one at 40px, each a resize of the one crop; student.npz is big_vision's."""
  c = vit_config("vit", TRAIN_VIT, {
      "t1": ("vit", dict(pool_type="map"), 24),
      "t2": ("bit", dict(common.LOCAL_STUDENT), 40)}, tmp_path)
  c.remat_student = True
  c.compute_dtype = "bfloat16"
  for name in [n for n in c.evals if n != "dist_val"]:
    del c.evals[name]  # One evaluator: every model's forward at its resolution.
  c.lock()
  workdir = tmp_path / "run"
  with helpers.mock_data(tfds_metadata):
    train.train(c, str(workdir))
  rows, last = helpers.read_metrics(str(workdir))
  for key in ("train/t1_loss", "train/t2_loss", "dist_val/t1_kl", "dist_val/t2_kl"):
    assert np.isfinite(last[key]) and last[key] > 0, key
  assert len([r for r in rows if "train/t1_loss" in r]) == common.LOCAL_STEPS
  student = vit.Model(c.num_classes, **TRAIN_VIT)
  arrays = vit.read_npz(str(workdir / "student.npz"))
  assert "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel" in arrays  # big_vision's keys.
  loaded = vit.load(shapes(student, 32), str(workdir / "student.npz"), head_mismatch="error")
  assert np.max(np.abs(loaded["params"]["head"]["kernel"])) > 0  # Trained from a zero head.


@pytest.mark.parametrize("student_name,student,teacher", [
    ("bit", dict(common.LOCAL_STUDENT), ("vit", dict(pool_type="tok"), 24)),
    ("mobilenet_v3", dict(common.LOCAL_MOBILENET_V3), ("vit", dict(pool_type="map"), 32)),
    ("vit", TRAIN_VIT, ("vit", dict(pool_type="tok"), 40)),
    ("vit", dict(TRAIN_VIT, remat=True, scan=True), ("bit", dict(common.LOCAL_TEACHER), 24)),
])
def test_every_student_teacher_combination_builds(tmp_path, student_name, student, teacher):
  """The train step of each pair, traced (jax.eval_shape: nothing compiles), and
  the teacher's file loaded, frozen and cast once to the compute dtype."""
  c = vit_config(student_name, student, {"t1": teacher}, tmp_path)
  c.compute_dtype = "bfloat16"
  c.remat_student = student_name == "vit"
  c.lock()
  s = benchmark.build(c)
  new_state, metrics = jax.eval_shape(s.train.train_step, s.train.state, s.teacher_shape,
                                      s.batch_shape)
  assert metrics["train/t1_loss"].shape == () and metrics["train/t1_loss"].dtype == jnp.float32
  assert jax.tree.structure(new_state) == jax.tree.structure(s.train.state)
  loaded = weights.load_teachers(c, s.models, s.train.mesh)
  assert jax.tree.structure(loaded) == jax.tree.structure(s.teacher_shape)
  assert {x.dtype for x in jax.tree.leaves(loaded)} == {jnp.dtype(jnp.bfloat16)}


def test_a_large_vit_teachers_kernels_are_sharded_over_fsdp(tmp_path):
  """A ViT teacher (standing in for L/16 or So400m/14) on 4 CPU devices, fsdp=4:
  the arrays of config.fsdp_min_size elements or more are split over fsdp."""
  path = write_vit(tmp_path / "t.npz", 102, 32, pool_type="map")
  out = helpers.run_with_devices(4, f"""
      import json
      import jax
      from big_distill import model_set, plan, weights
      from tests import helpers
      c = helpers.get_config("flowers_vit_r50", "runlocal")
      c.t1_init, c.mesh.fsdp, c.fsdp_min_size = {path!r}, 4, 1024
      models = model_set.build_models(c)
      loaded = weights.load_teachers(c, models, plan.make_mesh(c))
      flat = jax.tree_util.tree_flatten_with_path(loaded["t1"]["params"])[0]
      print(json.dumps({{"/".join(k.key for k in p): [str(x.sharding.spec), x.size]
                         for p, x in flat}}))
      """)
  big = {k: spec for k, (spec, size) in out.items() if size >= 1024}
  assert "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in big
  assert "MAPHead_0/MultiHeadDotProductAttention_0/query/kernel" in big
  assert all("fsdp" in spec for spec in big.values()), big
  assert all("fsdp" not in spec for k, (spec, size) in out.items() if size < 1024), out


@pytest.mark.parametrize("other,fields", [
    (dict(width=48, num_heads=2),
     ["MAPHead_0/LayerNorm_0/bias: file (48,), model (32,)", "width=48", "width=32"]),
    (dict(num_classes=10), ["a head for 10 classes", "num_classes=102"]),
])
def test_a_teacher_that_does_not_fit_is_one_error_line(tfds_metadata, tmp_path, capsys,
                                                      monkeypatch, other, fields):
  """Through the command: exit 2 and one `error:` line, before the data or any compile."""
  num_classes = other.pop("num_classes", 102)
  path = write_vit(tmp_path / "t.npz", num_classes, 32, pool_type="map", **other)
  monkeypatch.setattr(feeding, "prepare_train_data", helpers.tripwire("the input pipeline"))
  with helpers.mock_data(tfds_metadata), pytest.raises(SystemExit) as e:
    helpers.run_main(train, ["train", f"--config={helpers.REPO}/configs/flowers_vit_r50.py:runlocal",
                             f"--config.t1_init={path}", f"--workdir={tmp_path / 'w'}"],
                     monkeypatch)
  assert e.value.code == 2
  stderr = capsys.readouterr().err
  err = [line for line in stderr.splitlines() if "error:" in line]
  assert len(err) == 1 and err[0].startswith(f"big_distill.train: error: config.t1_init={path} (for config.t1, a 'vit'): "), err
  message = stderr[stderr.index(err[0]):]  # vit.load lists the arrays on the lines after it.
  for field in fields:
    assert field in message, (field, message)
  assert not (tmp_path / "w" / "config.json").exists()
