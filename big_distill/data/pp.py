"""The preprocessing language: `'decode|inception_crop(128)|flip_lr|value_range(-1, 1)'`.

A pp string is a `|`-separated list of ops. Each op is a factory registered by
name (`@register`); the factory takes the arguments written in the string and
returns a function from example dict to example dict. `parse()` reads the
string with `ast` (literals only, nothing is evaluated), checks every op name
and binds the arguments against the factory's signature, so a typo or a wrong
argument fails when the input pipeline is built, with the op, the pp string
and a fix, not at step 1000.

Ops that work on one entry take `key` (default "image", or "label" for
`onehot`) and `key_result` (default: `key`), e.g.
`onehot(102, key="label", key_result="labels")`.

Random ops take their randomness only from `data["_rng"]`, a stateless seed
(int64[2]) that the input pipeline derives from `(config.seed, position)`;
each random op splits it with `tf.random.experimental.stateless_split`, uses
one half and leaves the other for the next op. No stateful TF random op is
used, so a stream is a function of its seed and can be resumed at any step.
Keys starting with "_" are internal and survive `keep`.
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
from typing import Any, Callable

import tensorflow as tf

from big_distill.data import views

Example = dict[str, Any]
PPFn = Callable[[Example], Example]

_OPS: dict[str, Callable[..., PPFn]] = {}
_RANDOM: set[str] = set()  # Ops that read data["_rng"].


def register(name: str) -> Callable[[Callable[..., PPFn]], Callable[..., PPFn]]:
  """Registers an op factory under `name` (the name used in pp strings)."""
  def deco(factory):
    if name in _OPS:
      raise ValueError(f"pp op {name!r} is registered twice.")
    _OPS[name] = factory
    return factory
  return deco


def names() -> list[str]:
  """The names of all registered ops."""
  return sorted(_OPS)


# ---- Parsing ---------------------------------------------------------------


def _split_ops(pp: str) -> list[str]:
  """Splits at the `|` that are outside brackets and quotes."""
  parts, depth, quote, start = [], 0, None, 0
  for i, ch in enumerate(pp):
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "|" and depth == 0:
      parts.append(pp[start:i])
      start = i + 1
  parts.append(pp[start:])
  return [p.strip() for p in parts if p.strip()]


def _signature(name: str) -> str:
  return f"{name}{inspect.signature(_OPS[name])}"


def _parse_call(text: str, pp: str) -> tuple[str, inspect.BoundArguments]:
  """One op's name and its arguments bound to the op's signature (defaults applied)."""
  where = f"pp op {text!r} in pp string {pp!r}"
  try:
    node = ast.parse(text, mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"Cannot parse {where}: {e.msg}. Ops look like "
                     "`name` or `name(arg, key=value)`, separated by '|'.") from None
  if isinstance(node, ast.Name):
    name, args, kwargs = node.id, [], {}
  elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    name = node.func.id
    try:
      args = [ast.literal_eval(a) for a in node.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
    except ValueError:
      raise ValueError(f"Arguments of {where} must be Python literals "
                       "(numbers, strings, tuples, None, True/False).") from None
    if any(k.arg is None for k in node.keywords):
      raise ValueError(f"{where}: `**kwargs` is not allowed; write key=value.")
  else:
    raise ValueError(f"Cannot parse {where}: expected `name` or `name(args)`.")

  if name not in _OPS:
    close = difflib.get_close_matches(name, _OPS, n=3, cutoff=0.5)
    hint = (f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else "")
    raise ValueError(f"Unknown pp op {name!r} in pp string {pp!r}. {hint}"
                     f"Known ops: {', '.join(names())}.")
  try:
    bound = inspect.signature(_OPS[name]).bind(*args, **kwargs)
  except TypeError as e:
    raise ValueError(f"Bad arguments for {where}: {e}. The op's signature is "
                     f"{_signature(name)}; fix the pp string in the config.") from None
  return name, bound


def _parse_op(text: str, pp: str) -> PPFn:
  name, bound = _parse_call(text, pp)
  try:
    return _OPS[name](*bound.args, **bound.kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"Bad arguments for pp op {text!r} in pp string {pp!r}: {e}. "
                     f"The op's signature is {_signature(name)}.") from None


def random_ops(pp: str) -> list[str]:
  """The names of the random ops in `pp` (empty: `pp` is a function of the example)."""
  return [name for name, _ in describe(pp) if name in _RANDOM]


def describe(pp: str) -> list[tuple[str, dict[str, Any]]]:
  """[(op name, {argument: value, defaults included})] of `pp`, checked like parse().

  For code that implements some ops elsewhere (the device pipeline) and must
  read their arguments exactly as the ops would.
  """
  parse(pp)  # The same errors as building the pipeline.
  out = []
  for text in _split_ops(pp or ""):
    name, bound = _parse_call(text, pp)
    bound.apply_defaults()
    out.append((name, dict(bound.arguments)))
  return out


def parse(pp: str) -> PPFn:
  """Returns the function that applies the ops of `pp` in order ('' = identity)."""
  ops = [_parse_op(text, pp) for text in _split_ops(pp or "")]

  def apply(data: Example) -> Example:
    for op in ops:
      data = op(data)
    return data
  return apply


# ---- Helpers for ops -------------------------------------------------------


def _take_seed(data: Example, op: str) -> tf.Tensor:
  """Splits data["_rng"]: returns a seed for this op and keeps the other half."""
  if "_rng" not in data:
    raise KeyError(f"pp op {op!r} is random and needs data['_rng'] (a stateless "
                   "seed, int64[2]); the input pipeline sets it per example.")
  rng, seed = tf.unstack(tf.random.experimental.stateless_split(data["_rng"], 2))
  data["_rng"] = rng
  return seed


def keyed(name: str, default_key: str = "image", random: bool = False):
  """Registers a factory of a per-tensor function as an op with key/key_result.

  The factory returns `fn(tensor)` (or `fn(tensor, seed)` when `random`); the op
  reads `data[key]` and writes `data[key_result or key]`.
  """
  def deco(factory):
    @functools.wraps(factory)
    def op_factory(*args, key=default_key, key_result=None, **kwargs):
      fn = factory(*args, **kwargs)

      def op(data: Example) -> Example:
        if key not in data:
          raise KeyError(f"pp op {name!r}: the example has no {key!r} "
                         f"(keys: {sorted(data)}); set key=... or fix the op order.")
        data = dict(data)
        out = fn(data[key], _take_seed(data, name)) if random else fn(data[key])
        data[key_result or key] = out
        return data
      return op

    params = list(inspect.signature(factory).parameters.values())
    kw = inspect.Parameter.KEYWORD_ONLY
    op_factory.__signature__ = inspect.Signature(params + [
        inspect.Parameter("key", kw, default=default_key),
        inspect.Parameter("key_result", kw, default=None)])
    if random:
      _RANDOM.add(name)
    return register(name)(op_factory)
  return deco


def _hw(size) -> tuple[int, int]:
  """`128` or `(h, w)` -> (h, w)."""
  if isinstance(size, int):
    return size, size
  if isinstance(size, (tuple, list)) and len(size) == 2:
    return int(size[0]), int(size[1])
  raise ValueError(f"size must be an int or (height, width), got {size!r}")


def _resize(image: tf.Tensor, hw, method: str, antialias: bool) -> tf.Tensor:
  """Resizes and keeps the dtype (uint8 stays uint8, rounded and clipped)."""
  out = tf.image.resize(image, hw, method=method, antialias=antialias)
  if image.dtype == tf.uint8:
    out = tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
  return tf.cast(out, image.dtype)


TF_OPS = views.ArrayOps(
    where=tf.where, minimum=tf.minimum, maximum=tf.maximum, sqrt=tf.sqrt,
    round_int=lambda x: tf.cast(tf.round(x), tf.int32),  # tf.round: half to even.
    trunc_int=lambda x: tf.cast(x, tf.int32),
    floor_int=lambda x: tf.cast(tf.floor(x), tf.int32),
    to_int=lambda x: tf.cast(x, tf.int32), to_float=lambda x: tf.cast(x, tf.float32),
    cumsum=lambda x: tf.cumsum(x, axis=-1), sum=lambda x: tf.reduce_sum(x, axis=-1))


def inception_window(shape, seed, area_min=5, area_max=100) -> tf.Tensor:
  """int32[4] (top, left, height, width): a random window of an image of `shape`.

  Area area_min..area_max % of the image, aspect ratio 3/4..4/3: the box of
  `views.inception_box` (the device pipeline's too) from uniforms drawn with
  the stateless `seed`.
  """
  shape = tf.cast(shape, tf.int32)
  u = tf.random.stateless_uniform([views.num_uniforms()], seed, dtype=tf.float32)
  return tf.stack(views.inception_box(TF_OPS, u, shape[0], shape[1], area_min, area_max))


def crop_window(image, box) -> tf.Tensor:
  """The window `box` (top, left, height, width) of `image`, channels kept static."""
  out = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], -1])
  out.set_shape([None, None, image.shape[-1]])
  return out


def crop_and_resize(image, box, size=None, method="bilinear", antialias=False) -> tf.Tensor:
  """The window `box` of `image`, resized to `size` (None: not resized), dtype kept.

  A uint8 image gives uint8 pixels (rounded): the view of the host pipeline,
  which the device pipeline's `crop_and_resize` reproduces.
  """
  image = crop_window(image, box)
  return image if size is None else _resize(image, _hw(size), method, antialias)


def _check_area(area_min, area_max):
  if not 0 < area_min <= area_max <= 100:
    raise ValueError(f"need 0 < area_min <= area_max <= 100 (percent), "
                     f"got {area_min}, {area_max}")


# ---- Decoding --------------------------------------------------------------


def _decode(data: tf.Tensor, channels: int) -> tf.Tensor:
  if data.dtype != tf.string:  # Already decoded (e.g. by TFDS).
    return data
  image = tf.io.decode_image(data, channels=channels, expand_animations=False)
  image.set_shape([None, None, channels or None])
  return image


@keyed("decode")
def get_decode(channels=3):
  """Decodes JPEG/PNG/GIF/BMP bytes to uint8 [H, W, channels]."""
  return lambda data: _decode(data, channels)


@keyed("decode_jpeg_and_inception_crop", random=True)
def get_decode_jpeg_and_inception_crop(size=None, area_min=5, area_max=100,
                                       method="bilinear", antialias=False):
  """`decode|inception_crop(size)`, decoding only the crop of a JPEG (faster).

  Non-JPEG bytes are decoded whole and cropped the same way.
  """
  _check_area(area_min, area_max)

  def fn(data, seed):
    def jpeg():
      window = inception_window(tf.image.extract_jpeg_shape(data), seed, area_min, area_max)
      return tf.image.decode_and_crop_jpeg(data, window, channels=3)

    def other():
      image = _decode(data, 3)
      return crop_window(image, inception_window(tf.shape(image), seed, area_min, area_max))

    image = tf.cond(tf.io.is_jpeg(data), jpeg, other)
    image.set_shape([None, None, 3])
    return image if size is None else _resize(image, _hw(size), method, antialias)
  return fn


# ---- Crops and resizes -----------------------------------------------------


@keyed("inception_crop", random=True)
def get_inception_crop(size=None, area_min=5, area_max=100, method="bilinear",
                       antialias=False):
  """The paper's crop: area_min..area_max % of the image, aspect 3/4..4/3, resized."""
  _check_area(area_min, area_max)

  def fn(image, seed):
    box = inception_window(tf.shape(image), seed, area_min, area_max)
    return crop_and_resize(image, box, size, method, antialias)
  return fn


@keyed("random_crop", random=True)
def get_random_crop(size):
  """A random `size` window (the image must be at least that large)."""
  h, w = _hw(size)

  def fn(image, seed):
    out = tf.image.stateless_random_crop(image, tf.stack([h, w, tf.shape(image)[-1]]), seed)
    out.set_shape([h, w, image.shape[-1]])
    return out
  return fn


@keyed("central_crop")
def get_central_crop(size):
  """The central `size` window."""
  h, w = _hw(size)

  def fn(image):
    shape = tf.shape(image)
    top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
    return image[top:top + h, left:left + w]
  return fn


@keyed("resize")
def get_resize(size, method="bilinear", antialias=False):
  """Resizes to `size` (int or (h, w)), keeping the dtype."""
  hw = _hw(size)
  return lambda image: _resize(image, hw, method, antialias)


@keyed("resize_small")
def get_resize_small(size, method="area", antialias=False):
  """Resizes so that the shorter side is `size`, keeping the aspect ratio."""
  def fn(image):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    ratio = tf.cast(size, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
    hw = [tf.cast(tf.round(tf.cast(h, tf.float32) * ratio), tf.int32),
          tf.cast(tf.round(tf.cast(w, tf.float32) * ratio), tf.int32)]
    return _resize(image, tf.maximum(tf.stack(hw), size), method, antialias)
  return fn


@keyed("flip_lr", random=True)
def get_flip_lr():
  """Flips left-right with probability 1/2."""
  return lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed)


# ---- Values ----------------------------------------------------------------


@keyed("value_range")
def get_value_range(vmin=-1, vmax=1, in_min=0, in_max=255.0, clip_values=False):
  """Maps [in_min, in_max] linearly to [vmin, vmax] as float32."""
  def fn(image):
    image = views.value_range(tf.cast(image, tf.float32), vmin, vmax, in_min, in_max)
    return tf.clip_by_value(image, vmin, vmax) if clip_values else image
  return fn


@keyed("grayscale_to_rgb")
def get_grayscale_to_rgb():
  """Repeats a single channel three times; RGB images pass unchanged."""
  def fn(image):
    channels = image.shape[-1]
    if channels == 3:
      return image
    if channels == 1:
      return tf.image.grayscale_to_rgb(image)
    return tf.cond(tf.shape(image)[-1] == 1,
                   lambda: tf.image.grayscale_to_rgb(image), lambda: image)
  return fn


@keyed("onehot", default_key="label")
def get_onehot(depth, on=1.0, off=0.0):
  """A float32 one-hot vector of length `depth`."""
  return lambda label: tf.one_hot(label, depth, on_value=on, off_value=off,
                                  dtype=tf.float32)


# ---- Dict ops --------------------------------------------------------------


@register("keep")
def get_keep(*keys):
  """Keeps only `keys` (and the internal keys that start with '_')."""
  def op(data):
    missing = [k for k in keys if k not in data]
    if missing:
      raise KeyError(f"pp op keep: no {missing} in the example (keys: {sorted(data)}).")
    return {k: v for k, v in data.items() if k in keys or k.startswith("_")}
  return op


@register("copy")
def get_copy(inkey, outkey):
  """Copies `data[inkey]` to `data[outkey]`."""
  def op(data):
    return {**data, outkey: data[inkey]}
  return op
