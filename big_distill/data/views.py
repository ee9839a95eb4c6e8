"""The math of the training views, written once for the host and the device.

The host's pp ops (data/pp.py, TensorFlow, one example at a time) and the
device pipeline (data/device.py, JAX, a batch inside the train step) make the
same views. What decides a view is written here once, against a small set of
array operations (`ArrayOps`) that each side provides for its own library:

  * `inception_box`: the inception crop's window (top, left, height, width)
    from uniform random numbers, the image size and the area range;
  * `value_range`: the map of pixel values to the models' range.

Each side only draws the uniforms with its own random generator (stateless TF
seeds on the host, JAX keys on the device) and resizes the window with its
own library (tf.image.resize; two matrix products on the device), which
tests/test_device_views.py checks pixel by pixel for the same box and flip.

The crop follows `tf.image.sample_distorted_bounding_box` (min_object_covered
0, the whole image as the object), the op the paper's input pipeline used:
`attempts` times, draw an aspect ratio w/h uniformly in [3/4, 4/3], then an
integer height uniformly between the smallest and the largest whose area
fits the range (so the height, not the area, is uniform), fix rounding by one
step each way; take the first attempt that fits, else the whole image. The
offset is uniform in [0, H - h) (as TF's, the last position is never drawn).
Integers round half to even (as C's lrintf and jnp/tf.round).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

ATTEMPTS = 100  # As tf.image.sample_distorted_bounding_box's default.
ASPECT = (3 / 4, 4 / 3)  # The paper's (and TF's inception) aspect ratio range w/h.


@dataclasses.dataclass(frozen=True)
class ArrayOps:
  """The few array operations the views' math needs, for one array library.

  Arrays of either library support +, -, *, /, comparisons, & and indexing
  with `...` and None; what differs between libraries is named here.
  """
  where: Callable[[Any, Any, Any], Any]
  minimum: Callable[[Any, Any], Any]
  maximum: Callable[[Any, Any], Any]
  sqrt: Callable[[Any], Any]
  round_int: Callable[[Any], Any]  # float -> int32, half to even.
  trunc_int: Callable[[Any], Any]  # float -> int32, toward zero.
  floor_int: Callable[[Any], Any]  # float -> int32, toward -inf.
  to_int: Callable[[Any], Any]     # bool or int -> int32.
  to_float: Callable[[Any], Any]   # int or bool -> float32.
  cumsum: Callable[[Any], Any]     # along the last axis.
  sum: Callable[[Any], Any]        # over the last axis.


def num_uniforms(attempts: int = ATTEMPTS) -> int:
  """How many uniforms in [0, 1) `inception_box` takes per image."""
  return 2 * attempts + 2


def inception_box(ops: ArrayOps, u: Any, height: Any, width: Any, area_min: float = 5,
                  area_max: float = 100, attempts: int = ATTEMPTS) -> tuple[Any, Any, Any, Any]:
  """The inception crop's window (top, left, h, w) of an image of height x width.

  u: float32[..., num_uniforms(attempts)] uniforms in [0, 1): per attempt an
    aspect ratio and a height, then the two offsets.
  height, width: int32[...] the image sizes (`...` is u's batch shape).
  area_min, area_max: the crop's area range in percent of the image, as the
    pp op's arguments.
  Returns four int32[...] arrays.
  """
  lo, hi = ASPECT
  hi_i, wi_i = height, width
  h_img = ops.to_float(hi_i)[..., None]  # Broadcast over the attempts.
  w_img = ops.to_float(wi_i)[..., None]
  hi_1, wi_1 = hi_i[..., None], wi_i[..., None]
  ar = u[..., :attempts] * (hi - lo) + lo
  min_area = area_min / 100 * h_img * w_img
  max_area = area_max / 100 * h_img * w_img
  h = ops.round_int(ops.sqrt(min_area / ar))
  max_h = ops.round_int(ops.sqrt(max_area / ar))
  # The largest height whose rounded width still fits the image.
  too_wide = ops.round_int(ops.to_float(max_h) * ar) > wi_1
  fit = ops.trunc_int((w_img + 0.5 - 1e-7) / ar)
  fit = ops.where(ops.round_int(ops.to_float(fit) * ar) > wi_1, fit - 1, fit)
  max_h = ops.minimum(ops.where(too_wide, fit, max_h), hi_1)
  h = ops.minimum(h, max_h)
  h = h + ops.floor_int(u[..., attempts:2 * attempts] * ops.to_float(max_h - h + 1))
  w = ops.round_int(ops.to_float(h) * ar)
  # Rounding can leave the area just outside the range: one step each way.
  grow = ops.to_float(w * h) < min_area
  h = ops.where(grow, h + 1, h)
  w = ops.where(grow, ops.round_int(ops.to_float(h) * ar), w)
  shrink = ops.to_float(w * h) > max_area
  h = ops.where(shrink, h - 1, h)
  w = ops.where(shrink, ops.round_int(ops.to_float(h) * ar), w)
  area = ops.to_float(w * h)
  ok = ((area >= min_area) & (area <= max_area) & (w <= wi_1) & (h <= hi_1)
        & (w > 0) & (h > 0))
  first = ok & (ops.cumsum(ops.to_int(ok)) == 1)  # The first attempt that fits.
  found = ops.sum(ops.to_int(first)) > 0
  zero = ops.to_int(first) * 0
  h = ops.where(found, ops.sum(ops.where(first, h, zero)), hi_i)
  w = ops.where(found, ops.sum(ops.where(first, w, zero)), wi_i)
  top = ops.floor_int(u[..., 2 * attempts] * ops.to_float(ops.maximum(hi_i - h, 1)))
  left = ops.floor_int(u[..., 2 * attempts + 1] * ops.to_float(ops.maximum(wi_i - w, 1)))
  top = ops.where(h < hi_i, top, top * 0)
  left = ops.where(w < wi_i, left, left * 0)
  return top, left, h, w


def value_range(x: Any, vmin: float = -1, vmax: float = 1, in_min: float = 0,
                in_max: float = 255.0) -> Any:
  """Maps [in_min, in_max] linearly to [vmin, vmax] (x: float32 of any library)."""
  return (x - in_min) / (in_max - in_min) * (vmax - vmin) + vmin
