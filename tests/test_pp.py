"""The pp language: parser, errors, and one test per op."""

import numpy as np
import pytest
import tensorflow as tf

from big_distill.data import pp

RNG = tf.constant([1, 2], tf.int64)


def _image(h=48, w=40, c=3):
  return tf.constant(np.arange(h * w * c).reshape(h, w, c) % 251, tf.uint8)


def run(pp_str, **data):
  out = pp.parse(pp_str)(dict(data))
  return {k: v.numpy() if hasattr(v, "numpy") else v for k, v in out.items()}


# ---- Parser ----------------------------------------------------------------


def test_parse_issue_example():
  png = tf.io.encode_png(_image(60, 50))
  out = run('decode|inception_crop(128)|flip_lr|value_range(-1, 1)|'
            'onehot(102, key="label", key_result="labels")|keep("image", "labels")',
            image=png, label=tf.constant(7, tf.int64), _rng=RNG)
  assert sorted(out) == ["_rng", "image", "labels"]
  assert out["image"].shape == (128, 128, 3) and out["image"].dtype == np.float32
  assert -1 <= out["image"].min() and out["image"].max() <= 1
  assert out["labels"].argmax() == 7 and out["labels"].sum() == 1


def test_parse_empty_is_identity_and_pipes_inside_strings():
  assert run("", x=1) == {"x": 1}
  out = run('copy("a|b", "c")|keep("c")', **{"a|b": tf.constant(3)})
  assert out == {"c": 3}


@pytest.mark.parametrize("pp_str, expected", [
    ("decode|inception_crp(128)", r"Unknown pp op 'inception_crp'.*inception_crop"),
    ("flip_rl", r"Did you mean 'flip_lr'"),
    ("resize(1, 2, 3, 4)", r"Bad arguments for pp op 'resize\(1, 2, 3, 4\)'.*resize\(size"),
    ("value_range(-1, 1, out_max=3)", r"value_range.*unexpected keyword.*out_max"),
    ("central_crop", r"missing a required argument: 'size'"),
    ("resize(size)", r"must be Python literals"),
    ("resize(128", r"Cannot parse"),
    ("inception_crop(128, area_min=50, area_max=10)", r"area_min <= area_max"),
])
def test_parse_errors_name_op_and_string(pp_str, expected):
  with pytest.raises(ValueError, match=expected) as e:
    pp.parse(pp_str)
  assert repr(pp_str) in str(e.value)


def test_random_op_without_rng_is_clear():
  with pytest.raises(KeyError, match=r"flip_lr.*_rng"):
    run("flip_lr", image=_image())


def test_missing_key_is_clear():
  with pytest.raises(KeyError, match=r"resize.*no 'img'"):
    run("resize(8, key='img')", image=_image())


def test_random_ops_depend_only_on_rng():
  image, pp_str = _image(), "inception_crop(16)|flip_lr|random_crop(8)"
  a = run(pp_str, image=image, _rng=RNG)
  b = run(pp_str, image=image, _rng=RNG)
  c = run(pp_str, image=image, _rng=tf.constant([1, 3], tf.int64))
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["_rng"], b["_rng"])
  assert not np.array_equal(a["image"], c["image"])
  assert not np.array_equal(a["_rng"], RNG.numpy())  # The seed was split.


# ---- Ops -------------------------------------------------------------------


@pytest.mark.parametrize("encode", [tf.io.encode_png, tf.io.encode_jpeg])
def test_decode(encode):
  out = run("decode", image=encode(_image(20, 10)))["image"]
  assert out.shape == (20, 10, 3) and out.dtype == np.uint8
  gray = run("decode(1)", image=tf.io.encode_png(_image(20, 10, 1)))["image"]
  assert gray.shape == (20, 10, 1)
  already = _image()
  np.testing.assert_array_equal(run("decode", image=already)["image"], already)


@pytest.mark.parametrize("encode", [tf.io.encode_png, tf.io.encode_jpeg])
def test_decode_jpeg_and_inception_crop(encode):
  out = run("decode_jpeg_and_inception_crop(24)", image=encode(_image()), _rng=RNG)
  assert out["image"].shape == (24, 24, 3) and out["image"].dtype == np.uint8
  crop = run("decode_jpeg_and_inception_crop", image=encode(_image()), _rng=RNG)
  h, w, _ = crop["image"].shape
  assert 0.05 * 48 * 40 * 0.9 <= h * w <= 48 * 40


def test_inception_crop_area_and_aspect():
  for i in range(20):
    out = run("inception_crop(area_min=50)", image=_image(100, 100),
              _rng=tf.constant([i, 0], tf.int64))["image"]
    h, w, _ = out.shape
    assert 0.5 * 1e4 * 0.95 <= h * w <= 1e4
    assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
  assert run("inception_crop((12, 20))", image=_image(), _rng=RNG)["image"].shape == (12, 20, 3)


def test_random_crop_is_a_window():
  image = _image()
  out = run("random_crop(8)", image=image, _rng=RNG)["image"]
  assert out.shape == (8, 8, 3)
  windows = [image.numpy()[i:i + 8, j:j + 8] for i in range(41) for j in range(33)]
  assert any(np.array_equal(out, w) for w in windows)


def test_central_crop():
  image = _image(10, 8)
  out = run("central_crop((4, 2))", image=image)["image"]
  np.testing.assert_array_equal(out, image.numpy()[3:7, 3:5])


def test_resize_keeps_dtype():
  out = run("resize(16)", image=_image())["image"]
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  f = run("resize((8, 4), method='nearest')", image=tf.cast(_image(), tf.float32))["image"]
  assert f.shape == (8, 4, 3) and f.dtype == np.float32


def test_resize_small():
  assert run("resize_small(20)", image=_image(48, 40))["image"].shape == (24, 20, 3)
  assert run("resize_small(20)", image=_image(30, 60))["image"].shape == (20, 40, 3)


def test_flip_lr():
  image = _image().numpy()
  outs = [run("flip_lr", image=image, _rng=tf.constant([i, 0], tf.int64))["image"]
          for i in range(16)]
  flipped = [np.array_equal(o, image[:, ::-1]) for o in outs]
  assert all(f or np.array_equal(o, image) for f, o in zip(flipped, outs))
  assert 0 < sum(flipped) < 16


def test_value_range():
  image = tf.constant([[[0, 255, 51]]], tf.uint8)
  out = run("value_range(-1, 1)", image=image)["image"]
  np.testing.assert_allclose(out, [[[-1, 1, -0.6]]], atol=1e-6)
  assert out.dtype == np.float32
  clipped = run("value_range(0, 1, in_min=0, in_max=100, clip_values=True)", image=image)
  np.testing.assert_allclose(clipped["image"], [[[0, 1, 0.51]]], atol=1e-6)


def test_onehot():
  out = run("onehot(4)", label=tf.constant(2))["label"]
  np.testing.assert_array_equal(out, [0, 0, 1, 0])
  out = run('onehot(3, key="y", key_result="labels", on=0.9, off=0.05)', y=tf.constant(0))
  np.testing.assert_allclose(out["labels"], [0.9, 0.05, 0.05])
  assert "y" in out


def test_keep():
  out = run('keep("image")', image=1, label=2, _rng=3)
  assert out == {"image": 1, "_rng": 3}
  with pytest.raises(KeyError, match="keep"):
    run('keep("labels")', image=1)


def test_copy():
  assert run('copy("image", "orig")', image=1) == {"image": 1, "orig": 1}


def test_grayscale_to_rgb():
  gray = _image(5, 4, 1)
  out = run("grayscale_to_rgb", image=gray)["image"]
  assert out.shape == (5, 4, 3)
  np.testing.assert_array_equal(out[..., 2], gray.numpy()[..., 0])
  rgb = _image(5, 4, 3)
  np.testing.assert_array_equal(run("grayscale_to_rgb", image=rgb)["image"], rgb)
  unknown = tf.function(lambda x: pp.parse("grayscale_to_rgb")({"image": x})["image"],
                        input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
  assert unknown(gray).shape == (5, 4, 3)


def test_every_registered_op_has_a_test():
  tested = {name for name in pp.names() if f"def test_{name}" in open(__file__).read()}
  assert tested == set(pp.names())
