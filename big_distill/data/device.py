"""Training views made on the accelerator from a device-resident data set.

With `config.input.cache = "device"` the decoded training images sit on every
device once (uint8, padded to the largest image, with each image's true
height and width), and the jitted train step makes the batch itself: it draws
the example indices, the inception crop, the flip, the per-model resize and
the value range from (seed, step) alone. No host work per step: a small data
set (Flowers102, Pets, the Fashion-MNIST miniature) feeds any accelerator.

Each view has one definition, shared with the host's pp ops (data/pp.py):
the parser is pp.py's (`parse_random_view` reads the bound arguments of
`pp.describe`), the crop window is `views.inception_box` (the host's
`inception_crop` op calls it too; only the uniforms come from JAX here), and
the value range is `views.value_range`. The window is resized like
`tf.image.resize(..., "bilinear", antialias=False)` (half-pixel centres, edge
clamping), written as two small matrix products per image so that it runs
well on GPUs and TPUs, then rounded to whole grey levels as the host's uint8
crop is; tests/test_device_views.py checks both paths pixel by pixel for the
same box and flip. A model whose resolution differs from the view's gets a
second, antialiased resize, as the host pipeline's `_to_model` does.

Views (`config.distill.views`): "consistent" (one crop and flip for every
model, the paper's consistent teaching), "independent" (one per model), and
"fixed" (teachers get their fixed view, computed once on the host and kept on
the device; the student random crops).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from big_distill.data import views as views_lib

# Streams derived from config.seed for the device pipeline (distinct from the
# host pipeline's, which are small integers in data/input.py).
_INDEX, _CROP, _FLIP = 101, 102, 103

JNP_OPS = views_lib.ArrayOps(
    where=jnp.where, minimum=jnp.minimum, maximum=jnp.maximum, sqrt=jnp.sqrt,
    round_int=lambda x: jnp.round(x).astype(jnp.int32),  # Half to even.
    trunc_int=lambda x: x.astype(jnp.int32),
    floor_int=lambda x: jnp.floor(x).astype(jnp.int32),
    to_int=lambda x: jnp.asarray(x).astype(jnp.int32),
    to_float=lambda x: jnp.asarray(x).astype(jnp.float32),
    cumsum=lambda x: jnp.cumsum(x, axis=-1), sum=lambda x: jnp.sum(x, axis=-1))


# ---- The inception crop ------------------------------------------------------


def inception_boxes(key: jax.Array, hw_B2: jax.Array, area_min: float = 5,
                    area_max: float = 100) -> jax.Array:
  """int32[B, 4] windows (top, left, height, width) of images of size hw_B2.

  `area_min`/`area_max` in percent of the image, as the pp op's arguments.
  The box is `views.inception_box`'s, as the host op's; only the uniforms
  come from JAX's generator.
  """
  u = jax.random.uniform(key, (jnp.shape(hw_B2)[0], views_lib.num_uniforms()), jnp.float32)
  return inception_boxes_from_uniforms(u, hw_B2, area_min, area_max)


def inception_boxes_from_uniforms(u_BU: jax.Array, hw_B2: jax.Array, area_min: float = 5,
                                  area_max: float = 100) -> jax.Array:
  """int32[B, 4]: `views.inception_box` of uniforms f32[B, views.num_uniforms()]."""
  hw_B2 = jnp.asarray(hw_B2, jnp.int32)
  u_BU = jnp.asarray(u_BU, jnp.float32)
  box = views_lib.inception_box(JNP_OPS, u_BU, hw_B2[:, 0], hw_B2[:, 1], area_min, area_max)
  return jnp.stack(box, axis=1)


def _resize_matrix(start, length, out: int, size_max: int) -> jax.Array:
  """f32[out, size_max]: bilinear weights of `out` samples of [start, start+length).

  As tf.image.resize (bilinear, no antialias): sample i reads source
  coordinate (i + 0.5) * length / out - 0.5 of the window, from the two
  neighbouring pixels clamped to the window.
  """
  scale = length.astype(jnp.float32) / out
  src = (jnp.arange(out, dtype=jnp.float32) + 0.5) * scale - 0.5
  lo_f = jnp.floor(src)
  frac = src - lo_f
  lo = jnp.clip(lo_f.astype(jnp.int32), 0, length - 1)
  hi = jnp.clip(jnp.ceil(src).astype(jnp.int32), 0, length - 1)
  cols = jnp.arange(size_max)
  m = ((cols[None] == (start + lo)[:, None]) * (1 - frac)[:, None]
       + (cols[None] == (start + hi)[:, None]) * frac[:, None])
  return m.astype(jnp.float32)


def crop_and_resize(images_BHWC: jax.Array, boxes_B4: jax.Array, out: int) -> jax.Array:
  """f32[B, out, out, C]: each image's window, resized bilinearly to out x out."""
  _, Hm, Wm, _ = images_BHWC.shape
  ry = jax.vmap(lambda b: _resize_matrix(b[0], b[2], out, Hm))(boxes_B4)  # [B, out, Hm]
  rx = jax.vmap(lambda b: _resize_matrix(b[1], b[3], out, Wm))(boxes_B4)  # [B, out, Wm]
  x = images_BHWC.astype(jnp.float32)
  hp = jax.lax.Precision.HIGHEST  # Exact weights: no bf16 passes on TPU.
  x = jnp.einsum("boh,bhwc->bowc", ry, x, precision=hp)
  return jnp.einsum("bpw,bowc->bopc", rx, x, precision=hp)


def flip(images_BHWC: jax.Array, flips_B: jax.Array) -> jax.Array:
  """Flips left-right the images whose flag in bool[B] `flips_B` is set."""
  return jnp.where(flips_B[:, None, None, None], images_BHWC[:, :, ::-1], images_BHWC)


def flip_lr(key: jax.Array, images_BHWC: jax.Array) -> jax.Array:
  """Flips each image left-right with probability 1/2."""
  return flip(images_BHWC, jax.random.bernoulli(key, 0.5, (images_BHWC.shape[0],)))


def crop_view(images_BHWC: jax.Array, boxes_B4: jax.Array, out: int,
              flips_B: jax.Array | None = None) -> jax.Array:
  """f32[B, out, out, C]: the random view of the host's pp ops, for given boxes and flips.

  As `inception_crop(out)|flip_lr` on the host: the window resized bilinearly
  and, for uint8 images, rounded to whole grey levels (the pp ops keep the
  dtype, so the host's crop of a uint8 image is a uint8 image), then flipped.
  """
  x = crop_and_resize(images_BHWC, boxes_B4, out)
  if images_BHWC.dtype == jnp.uint8:
    x = jnp.clip(jnp.round(x), 0, 255)
  return x if flips_B is None else flip(x, flips_B)


def resize_to(images_BHWC: jax.Array, res: int) -> jax.Array:
  """A view at another model's resolution: antialiased, as the host pipeline."""
  if images_BHWC.shape[1:3] == (res, res):
    return images_BHWC
  B, _, _, C = images_BHWC.shape
  return jax.image.resize(images_BHWC, (B, res, res, C), "bilinear", antialias=True)


# ---- The batch indices ---------------------------------------------------------


def batch_indices(key: jax.Array, step: jax.Array, batch_size: int, n: int) -> jax.Array:
  """int32[batch_size]: the examples of global batch `step` (0-based).

  Global position g = step * B + i takes example perm_e[g % n] of a random
  permutation per epoch e = g // n, so every epoch sees every example once
  and the stream is a function of (seed, step) for any number of devices.
  """
  # g // n and g % n without forming g, which overflows int32 in long runs.
  step = jnp.asarray(step, jnp.int32)
  q, r = step // n, step % n
  within = r * batch_size + jnp.arange(batch_size, dtype=jnp.int32)  # < n * B.
  epoch = q * batch_size + within // n
  pos = within % n
  first = epoch[0]
  # A batch spans at most ceil(B / n) + 1 epochs.
  spans = -(-batch_size // n) + 1
  perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n))(
      first + jnp.arange(spans))
  return perms[epoch - first, pos].astype(jnp.int32)


# ---- The data set on the device, and the views ---------------------------------


@dataclasses.dataclass(frozen=True)
class RandomView:
  """What the device pipeline supports of `config.input.pp_random`."""
  size: int
  area_min: float = 5
  area_max: float = 100
  flip: bool = False


def parse_random_view(pp_random: str) -> RandomView:
  """`inception_crop(size[, area_min, area_max])[|flip_lr]`, or a clear error."""
  from big_distill import errors  # pylint: disable=g-import-not-at-top
  from big_distill.data import pp as pp_lib  # pylint: disable=g-import-not-at-top
  ops = pp_lib.describe(pp_random)
  names = [name for name, _ in ops]
  fix = (f"config.input.pp_random={pp_random!r}: with config.input.cache='device' the "
         "random view must be 'inception_crop(SIZE[, area_min=.., area_max=..])' "
         "optionally followed by '|flip_lr' (the ops the device pipeline implements). "
         "Use config.input.cache='decoded' for other random views.")
  if not names or names[0] != "inception_crop" or names[1:] not in ([], ["flip_lr"]):
    raise errors.ConfigError(fix)
  kw = ops[0][1]
  plain = dict(method="bilinear", antialias=False, key="image", key_result=None)
  if not isinstance(kw["size"], int) or any(kw[k] != v for k, v in plain.items()):
    raise errors.ConfigError(fix + " (inception_crop needs one int size, bilinear, "
                             "no antialias, the default key.)")
  if len(ops) == 2 and (ops[1][1]["key"] != "image" or ops[1][1]["key_result"]):
    raise errors.ConfigError(fix)
  return RandomView(size=kw["size"], area_min=float(kw["area_min"]),
                    area_max=float(kw["area_max"]), flip=len(names) == 2)


def parse_value_range(pp_post: str) -> tuple[float, float, float, float]:
  """(vmin, vmax, in_min, in_max) of `config.input.pp_post`, or a clear error."""
  from big_distill import errors  # pylint: disable=g-import-not-at-top
  from big_distill.data import pp as pp_lib  # pylint: disable=g-import-not-at-top
  ops = pp_lib.describe(pp_post)
  if (len(ops) != 1 or ops[0][0] != "value_range" or ops[0][1]["clip_values"]
      or ops[0][1]["key"] != "image" or ops[0][1]["key_result"]):
    raise errors.ConfigError(
        f"config.input.pp_post={pp_post!r}: with config.input.cache='device' it must be "
        "one 'value_range(vmin, vmax[, in_min, in_max])' (what the device pipeline "
        "implements); use config.input.cache='decoded' otherwise.")
  kw = ops[0][1]
  return float(kw["vmin"]), float(kw["vmax"]), float(kw["in_min"]), float(kw["in_max"])


@dataclasses.dataclass(frozen=True)
class DeviceData:
  """The decoded training set, replicated on every device.

  images: uint8[N, Hmax, Wmax, C], each image at the top left, zero padded.
  hw: int32[N, 2], each image's true height and width.
  labels: int32[N] or None.
  fixed: {model: f32[N, r, r, C]} fixed views (before pp_post) for teachers.
  """
  images: jax.Array
  hw: jax.Array
  labels: Any
  fixed: dict[str, jax.Array]

  @property
  def num_examples(self) -> int:
    return int(self.images.shape[0])

  @property
  def nbytes(self) -> int:
    arrays = [self.images, self.hw, *self.fixed.values()]
    if self.labels is not None:
      arrays.append(self.labels)
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in arrays)


jax.tree_util.register_dataclass(DeviceData, data_fields=["images", "hw", "labels", "fixed"],
                                 meta_fields=[])


def put(decoded, config, mesh) -> DeviceData:
  """The decoded training set (input.Decoded) on every device of `mesh`, once.

  Teachers with a fixed view (`distill.views="fixed"`) get `input.pp_fixed`
  applied here, once per example, on the host. Refuses a set larger than
  `config.input.device_cache_gib` with the number it needs.
  """
  from big_distill import errors  # pylint: disable=g-import-not-at-top
  from big_distill.data import pp as pp_lib  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  n = decoded.num_examples
  hmax, wmax = (int(v) for v in decoded.hw.max(0))
  teachers = list(config.teachers)
  fixed_res = {t: config[f"{t}_res"] for t in teachers} if config.distill.views == "fixed" else {}
  need = n * hmax * wmax * decoded.channels + n * 2 * 4 + n * 4 + sum(
      n * r * r * decoded.channels * 4 for r in fixed_res.values())
  limit = config.input.device_cache_gib * 2**30
  if need > limit:
    raise errors.ConfigError(
        f"config.input.cache='device': the training set ({n} images padded to "
        f"{hmax}x{wmax}x{decoded.channels} uint8{', plus the fixed views' if fixed_res else ''})"
        f" needs {need / 2**30:.3g} GiB on every device, more than "
        f"config.input.device_cache_gib={config.input.device_cache_gib}. Raise it if the "
        "devices have the memory, store smaller images (e.g. 'decode|resize_small(160)' in "
        "config.input.pp), or use config.input.cache='decoded'.")
  fixed_pp = pp_lib.parse(config.input.pp_fixed)
  fixed = {}
  for t, r in fixed_res.items():
    views = []
    for i in range(n):
      image = tf.cast(fixed_pp({"image": decoded.image(i)})["image"], tf.float32)
      if tuple(image.shape[:2]) != (r, r):  # As the host pipeline's _to_model.
        image = tf.image.resize(image, (r, r), antialias=True)
      views.append(image.numpy())
    fixed[t] = np.stack(views)
  host = DeviceData(images=decoded.padded(), hw=decoded.hw.astype(np.int32),
                    labels=decoded.labels, fixed=fixed)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def replicate(x):  # Every process holds the whole (identical) set.
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(replicate, host)


def batch_fn(config) -> Any:
  """`(data, step) -> batch` of the config, for `make_batch` inside the train step."""
  import functools  # pylint: disable=g-import-not-at-top
  res = {"student": config.student_res, **{t: config[f"{t}_res"] for t in config.teachers}}
  return functools.partial(
      make_batch, seed=config.seed, batch_size=config.input.batch_size,
      views=config.distill.views, res=res,
      random_view=parse_random_view(config.input.pp_random),
      value_range=parse_value_range(config.input.pp_post))


def make_batch(data: DeviceData, step: jax.Array, *, seed: int, batch_size: int,
               views: str, res: dict[str, int], random_view: RandomView,
               value_range: tuple[float, float, float, float]) -> dict[str, Any]:
  """The training batch of global step `step` (0-based), made on the device.

  Returns {"image": {model: f32[B, r, r, C]}, "label": int32[B]} like the host
  pipeline's batches. Call it inside the jitted step; the caller constrains
  the result to the batch sharding.
  """
  root = jax.random.key(seed)
  idx = batch_indices(jax.random.fold_in(root, _INDEX), step, batch_size, data.num_examples)
  crop_key = jax.random.fold_in(jax.random.fold_in(root, _CROP), step)
  flip_key = jax.random.fold_in(jax.random.fold_in(root, _FLIP), step)
  images = jnp.take(data.images, idx, axis=0)
  hw = jnp.take(data.hw, idx, axis=0)
  vmin, vmax, in_min, in_max = value_range

  def post(x):
    return views_lib.value_range(x, vmin, vmax, in_min, in_max)

  rv = random_view

  def crop(i):
    boxes = inception_boxes(jax.random.fold_in(crop_key, i), hw, rv.area_min, rv.area_max)
    flips = (jax.random.bernoulli(jax.random.fold_in(flip_key, i), 0.5, (len(idx),))
             if rv.flip else None)
    return crop_view(images, boxes, rv.size, flips)

  names = list(res)
  out = {}
  if views == "consistent":
    shared = crop(0)
    out = {n: resize_to(shared, res[n]) for n in names}
  elif views == "independent":
    out = {n: resize_to(crop(i), res[n]) for i, n in enumerate(names)}
  elif views == "fixed":
    out = {"student": resize_to(crop(0), res["student"])}
    for n in names:
      if n != "student":
        out[n] = resize_to(jnp.take(data.fixed[n], idx, axis=0), res[n])
  else:
    raise ValueError(f"views={views!r}")
  batch = {"image": {n: post(x) for n, x in out.items()}}
  if data.labels is not None:
    batch["label"] = jnp.take(data.labels, idx, axis=0)
  return batch
