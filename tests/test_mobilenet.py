"""Tests for big_distill.models.mobilenet_v3: sizes, forward, BatchNorm, checkpoints."""

import functools
import importlib
import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_distill.errors import CheckpointError, ConfigError
from big_distill.models import mobilenet_v3 as mnv3


def _shapes(model, res=224):
  return jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, res, res, 3))), jax.random.key(0))


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


# ---- Architecture ----------------------------------------------------------

# timm's parameter counts of mobilenetv3_large_100 / mobilenetv3_small_100.
@pytest.mark.parametrize("variant,want", [("large", 5_483_032), ("small", 2_542_856)])
@pytest.mark.parametrize("norm", ["batch", "group"])
def test_parameter_counts_match_the_reference(variant, want, norm):
  shapes = _shapes(mnv3.Model(1000, variant=variant, norm=norm))
  assert _count(shapes["params"]) == want
  if norm == "batch":  # A mean and a variance for every scale.
    scales = {k: v for k, v in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
              if k[-1].key == "scale"}
    assert _count(shapes["batch_stats"]) == 2 * _count(list(scales.values()))
  else:
    assert set(shapes) == {"params"}


def test_large_layers_as_in_the_paper_table():
  p = _shapes(mnv3.Model(1000, variant="large"))["params"]
  assert p["stem_conv"]["kernel"].shape == (3, 3, 3, 16)
  assert "block01_expand" not in p  # Expansion 1: depthwise + projection only.
  assert p["block01_depthwise"]["kernel"].shape == (3, 3, 1, 16)
  assert p["block04_expand"]["kernel"].shape == (1, 1, 24, 72)
  assert p["block04_depthwise"]["kernel"].shape == (5, 5, 1, 72)
  assert p["block04_se_reduce"]["kernel"].shape == (72, 24)  # 72/4 = 18, rounded to 24.
  assert p["block09_expand"]["kernel"].shape == (1, 1, 80, 184)  # 80 * 2.3.
  assert p["block15_project"]["kernel"].shape == (1, 1, 960, 160)
  assert p["final_conv"]["kernel"].shape == (1, 1, 160, 960)
  assert p["head_conv"]["kernel"].shape == (960, 1280)
  assert p["head"]["kernel"].shape == (1280, 1000)


def test_width_scales_channels_with_the_reference_rounding():
  p = _shapes(mnv3.Model(10, variant="small", width=0.5), 32)["params"]
  assert p["stem_conv"]["kernel"].shape[-1] == 16   # Fixed below width 0.75.
  assert p["block01_project"]["kernel"].shape[-1] == 8    # 16 * 0.5.
  assert p["block02_project"]["kernel"].shape[-1] == 16   # 24 * 0.5 = 12 -> 16.
  assert p["block02_expand"]["kernel"].shape[-1] == 40    # 8 * 4.5 = 36 -> 40.
  assert p["final_conv"]["kernel"].shape[-1] == 288       # 576 * 0.5.
  assert p["head_conv"]["kernel"].shape == (288, 1024)    # The head is not scaled.
  assert [mnv3.make_divisible(v) for v in (8, 12, 18, 36, 88.08, 4)] == [8, 16, 24, 40, 88, 8]


def test_group_count():
  assert mnv3.group_count(24, 8) == 8
  assert mnv3.group_count(24, 32) == 24  # Largest divisor of 24 up to 32.
  assert mnv3.group_count(40, 16) == 10
  assert mnv3.group_count(4, 8) == 4


def test_bad_arguments_are_config_errors():
  with pytest.raises(ConfigError, match="variant='medium'"):
    mnv3.Model(10, variant="medium")
  with pytest.raises(ConfigError, match="norm='layer'"):
    mnv3.Model(10, norm="layer")
  with pytest.raises(ConfigError, match="width=0"):
    mnv3.Model(10, width=0.0)


def test_small_input_drops_early_downsampling():
  def out_shapes(small_input):
    model = mnv3.Model(10, variant="small", width=0.5, small_input=small_input)
    variables = _shapes(model, 32)
    return jax.eval_shape(lambda v, x: model.apply(v, x)[1], variables,
                          jnp.zeros((2, 32, 32, 3)))
  full, small = out_shapes(False), out_shapes(True)
  assert full["features"].shape == (2, 1, 1, 288)   # 32x down.
  assert small["features"].shape == (2, 4, 4, 288)  # 8x down.
  assert small["stem"].shape == (2, 32, 32, 16)
  assert small["pre_logits"].shape == (2, 1024)
  assert _count(_shapes(mnv3.Model(10, variant="small", small_input=True), 32)) == _count(
      _shapes(mnv3.Model(10, variant="small"), 32))


# ---- Forward ---------------------------------------------------------------

IMAGES = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
# The same first two images with two others: in train mode BatchNorm makes
# their logits depend on the rest of the batch.
OTHERS = jnp.concatenate([IMAGES[:2], -IMAGES[2:]], axis=0)


@functools.lru_cache
def _tiny(norm):
  """A small model at 16px, its variables, and one compiled forward pass.

  For BatchNorm the compiled function runs both modes: eval (logits,
  pre-logits) and train (logits, the updated batch_stats).
  """
  model = mnv3.Model(10, variant="small", width=0.5, norm=norm, small_input=True)
  # Random variables of the model's shapes, drawn with numpy: compiling
  # model.init (threefry for every kernel) takes longer on 2 cores than the
  # forward pass. Kernels ~ N(0, 1/fan_in), the head too (it starts at zeros,
  # and logits should depend on the features); norms and stats at identity.
  rng = np.random.default_rng(1)

  def draw(path, x):
    name = path[-1].key
    if name == "kernel":
      return (rng.normal(size=x.shape) / np.sqrt(math.prod(x.shape[:-1]))).astype(np.float32)
    if name == "bias" and path[0].key == "head":
      return np.arange(x.shape[0], dtype=np.float32)
    return np.full(x.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

  variables = jax.tree_util.tree_map_with_path(
      draw, jax.eval_shape(model.init, jax.random.key(1), IMAGES[:1]))

  @jax.jit
  def both_modes(variables, images):
    logits, out = model.apply(variables, images)
    if norm == "batch":
      (train_logits, _), new = model.apply(variables, images, train=True,
                                           mutable=["batch_stats"])
      return logits, out["pre_logits"], train_logits, new["batch_stats"]
    return logits, out["pre_logits"], None, None

  return model, variables, both_modes


def test_forward_group_norm():
  _, variables, both_modes = _tiny("group")
  logits, pre_logits, _, _ = both_modes(variables, IMAGES)
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  assert pre_logits.shape == (4, 1024)
  head = variables["params"]["head"]
  np.testing.assert_allclose(logits, pre_logits @ head["kernel"] + head["bias"],
                             rtol=1e-5, atol=1e-5)
  assert np.all(np.isfinite(logits)) and float(jnp.std(logits[:, 0])) > 0
  # GroupNorm normalizes each image on its own: its logits do not depend on
  # the rest of the batch.
  np.testing.assert_allclose(both_modes(variables, OTHERS)[0][:2], logits[:2],
                             rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_float32_params_and_logits():
  model = mnv3.Model(10, variant="small", width=0.5, small_input=True, dtype=jnp.bfloat16)
  variables = jax.eval_shape(model.init, jax.random.key(1), IMAGES[:1])
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits, out = jax.eval_shape(model.apply, variables, IMAGES)
  assert logits.dtype == jnp.float32 and out["pre_logits"].dtype == jnp.float32
  assert out["block05"].dtype == jnp.bfloat16 and out["stem"].dtype == jnp.bfloat16


def test_batch_norm_train_updates_stats_and_eval_uses_them():
  _, variables, both_modes = _tiny("batch")
  stats0 = variables["batch_stats"]
  logits_eval, _, logits_train, stats1 = both_modes(variables, IMAGES)
  # Running mean of the stem: decay 0.99 from 0 towards the batch mean of the
  # stem conv's output (no stride with small_input; padding 1).
  conv = jax.lax.conv_general_dilated(
      IMAGES, variables["params"]["stem_conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(stats1["stem_norm"]["mean"], 0.01 * conv.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(stats0["stem_norm"]["mean"], 0.0)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), stats0, stats1)
  assert all(jax.tree.leaves(changed))
  # Train mode normalizes with the batch: an image's logits depend on the
  # other images. Eval mode uses the running averages: they do not.
  others_eval, _, others_train, _ = both_modes(variables, OTHERS)
  assert not np.allclose(others_train[:2], logits_train[:2], atol=1e-4)
  np.testing.assert_allclose(others_eval[:2], logits_eval[:2], rtol=1e-5, atol=1e-5)
  # ... and they are the averages given, not the batch's.
  with_new = {"params": variables["params"], "batch_stats": stats1}
  assert not np.allclose(both_modes(with_new, IMAGES)[0], logits_eval, atol=1e-4)
  assert not np.allclose(logits_eval, logits_train, atol=1e-4)


# ---- Checkpoints -----------------------------------------------------------

def _perturbed(variables, seed=5):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: (np.asarray(x) + rng.normal(size=x.shape)).astype(x.dtype),
                      variables)


def _zeros(tree):
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_save_load_round_trip_is_bitwise(tmp_path, norm):
  variables = _perturbed(_tiny(norm)[1])
  path = str(tmp_path / "student.npz")
  mnv3.save(variables, path)
  assert not (tmp_path / "student.npz.tmp").exists()
  with np.load(path, allow_pickle=False) as npz:
    keys = set(npz.files)
  assert "head/kernel" in keys and "block03_depthwise/kernel" in keys
  assert any(k.startswith("batch_stats/") for k in keys) == (norm == "batch")
  loaded = mnv3.load(_zeros(variables), path)
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(variables))
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  # The params tree alone round-trips too (what the trainer exports today).
  params_path = str(tmp_path / "params.npz")
  mnv3.save(variables["params"], params_path)
  jax.tree.map(np.testing.assert_array_equal,
               mnv3.load(_zeros(variables["params"]), params_path),
               jax.device_get(variables["params"]))


def test_load_errors_name_the_arrays(tmp_path):
  variables = _tiny("batch")[1]
  path = str(tmp_path / "bn.npz")
  mnv3.save(variables, path)
  # A BatchNorm file into a params-only template.
  with pytest.raises(CheckpointError, match=r"batch_stats/\w+/mean: in the file"
                     r"[\s\S]*norm='batch' model, to be loaded with the whole variables dict"):
    mnv3.load(_zeros(variables["params"]), path)
  # A GroupNorm model's file into a BatchNorm model.
  gn = _tiny("group")[1]
  gn_path = str(tmp_path / "gn.npz")
  mnv3.save(gn, gn_path)
  with pytest.raises(CheckpointError, match=r"0 mis-shaped, \d+ missing, 0 unexpected"
                     r"[\s\S]*norm='group' checkpoint"):
    mnv3.load(_zeros(variables), gn_path)
  # Another number of classes: an error where the logits must be this data set's.
  other = _shapes(mnv3.Model(7, variant="small", width=0.5, small_input=True), 16)
  with pytest.raises(CheckpointError, match=r"head for 10 classes, the model has num_classes=7"
                     r".*Fine-tune"):
    mnv3.load(_zeros(other["params"]), gn_path, head_mismatch="error")
  with pytest.raises(ValueError, match="head_mismatch='zero'"):
    mnv3.load(_zeros(other["params"]), gn_path, head_mismatch="zero")
  # Another variant: many arrays at once, the message is cut.
  large = _shapes(mnv3.Model(10, variant="large", width=0.5), 32)
  with pytest.raises(CheckpointError, match=r"\.\.\. and \d+ more[\s\S]*variant/width"):
    mnv3.load(_zeros(large["params"]), gn_path)


def test_head_of_another_class_count_keeps_the_templates_on_reinit(tmp_path):
  """The contract's head_mismatch="reinit" (the default): every array from
  the file but the head, which is the template's (the model's initial one)."""
  gn = _perturbed(_tiny("group")[1])  # 10 classes.
  path = str(tmp_path / "gn.npz")
  mnv3.save(gn, path)
  other = _perturbed(_zeros(_shapes(mnv3.Model(7, variant="small", width=0.5,
                                               small_input=True), 16)), seed=3)
  loaded = mnv3.load(other, path)
  np.testing.assert_array_equal(loaded["params"]["head"]["kernel"],
                                other["params"]["head"]["kernel"])
  np.testing.assert_array_equal(loaded["params"]["head"]["bias"], other["params"]["head"]["bias"])
  np.testing.assert_array_equal(loaded["params"]["head_conv"]["kernel"],
                                np.asarray(gn["params"]["head_conv"]["kernel"]))
  # A file without a head: the template's head too, or the error.
  headless = {k: v for k, v in mnv3.to_arrays(gn).items() if not k.startswith("head/")}
  np.savez(tmp_path / "headless.npz", **headless)
  loaded = mnv3.load(other, str(tmp_path / "headless.npz"))
  np.testing.assert_array_equal(loaded["params"]["head"]["bias"], other["params"]["head"]["bias"])
  with pytest.raises(CheckpointError, match="has no classifier head"):
    mnv3.load(other, str(tmp_path / "headless.npz"), head_mismatch="error")
  # ShapeDtypeStructs in the template: a re-initialized head is zeros.
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), other)
  assert not np.any(mnv3.load(shapes, path)["params"]["head"]["kernel"])


def test_contract_layouts_and_freeze(tmp_path):
  model, variables, _ = _tiny("batch")
  assert mnv3.LAYOUTS == ("flat",)
  assert mnv3.freeze(model, variables) == (model, variables)
  with pytest.raises(ValueError, match="layout='bit'"):
    mnv3.save(variables, str(tmp_path / "x.npz"), layout="bit")


def test_load_refuses_non_npz_and_pickles(tmp_path):
  template = _zeros(_tiny("group")[1])
  with pytest.raises(CheckpointError, match="does not exist"):
    mnv3.load(template, str(tmp_path / "nope.npz"))
  pkl = tmp_path / "model.pkl"
  pkl.write_bytes(pickle.dumps({"head/kernel": np.zeros(3)}))
  with pytest.raises(CheckpointError, match="not an .npz file"):
    mnv3.load(template, str(pkl))
  obj = tmp_path / "obj.npz"
  np.savez(obj, head=np.array([{"a": 1}], dtype=object))
  with pytest.raises(CheckpointError, match="pickled objects"):
    mnv3.load(template, str(obj))


# ---- configs/imagenet_mobilenet.py -----------------------------------------

ARGS = [",".join(a for a in (f"variant={v}", f"norm={n}", e, r) if a)
        for v in ("large", "small") for n in ("group", "batch")
        for e in ("", "ensemble") for r in ("", "runlocal")]


@functools.lru_cache
def _model_shapes(name, kwargs, num_classes, res):
  module = importlib.import_module(f"big_distill.models.{name}")
  model = module.Model(num_classes=num_classes, dtype=jnp.bfloat16, **dict(kwargs))
  return _shapes(model, res)


@pytest.mark.parametrize("arg", ARGS)
def test_imagenet_mobilenet_config_builds_and_its_models_evaluate(arg):
  from configs import imagenet_mobilenet  # pylint: disable=g-import-not-at-top
  a = dict(p.partition("=")[::2] for p in arg.split(","))
  c = imagenet_mobilenet.get_config(arg)
  local, ensemble = "runlocal" in a, "ensemble" in a
  assert c.student_name == "mobilenet_v3" and c.num_classes == 1000
  assert (c.student.variant, c.student.norm, c.student.groups) == (a["variant"], a["norm"], 8)
  assert c.student_res == (56 if local else 224)
  assert c.teachers == (("t1", "t2") if ensemble else ("t1",))
  want_res = {"t1": 224, "t2": 384}
  for t in c.teachers:
    assert c[f"{t}_name"] == "bit"
    assert c[f"{t}_res"] == want_res[t] // (4 if local else 1)
    if local:
      assert c[f"{t}_init"].startswith("workdirs/teachers/imagenet_local_")
    else:
      assert c[f"{t}_init"] == f"gs://bit_models/distill/R152x2_T_{want_res[t]}.npz"
      assert (c[t].depth, c[t].width, c[t].stem_pool_pad) == (152, 2.0, "neg_inf")
  # The paper's recipe: function matching, ImageNet's settings.
  assert (c.distill.views, c.mixup.p, c.distill.loss, c.distill.t) == ("consistent", 1.0, "kl", 1.0)
  assert (c.optim.name, c.lr, c.wd, c.input.batch_size) == (
      ("adam", 0.03, 3e-4, 16) if local else ("adam", 0.03, 3e-4, 4096))
  assert c.total_epochs == (None if local else 1200)
  assert {e.data.name for e in c.evals.values()} == {"imagenet2012"}

  # The models the trainer would build (by name, with the config's kwargs).
  freeze = lambda d: tuple(sorted(d.to_dict().items()))
  student = _model_shapes(c.student_name, freeze(c.student), c.num_classes, c.student_res)
  assert ("batch_stats" in student) == (a["norm"] == "batch")
  if not local:  # timm's count whatever the norm.
    assert _count(student["params"]) == {"large": 5_483_032, "small": 2_542_856}[a["variant"]]
  for t in c.teachers:
    teacher = _model_shapes(c[f"{t}_name"], freeze(c[t]), c.num_classes, c[f"{t}_res"])
    width = c[t].width
    assert teacher["params"]["head"]["kernel"].shape == (int(2048 * width), 1000)


def test_imagenet_mobilenet_config_refuses_unknown_values():
  from configs import imagenet_mobilenet  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="variant=medium: must be one of large, small"):
    imagenet_mobilenet.get_config("variant=medium")
  with pytest.raises(ConfigError, match="norm=layer"):
    imagenet_mobilenet.get_config("norm=layer")
  with pytest.raises(ValueError, match="Unknown config argument 'teachers'"):
    imagenet_mobilenet.get_config("teachers=3")
