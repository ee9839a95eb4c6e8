"""Training and evaluation streams per process, views, global arrays.

What the trainer calls (the data sets' checks and sizes are `datasets.py`'s):

    ds = input_lib.make_train_dataset(config, start_step=step)
    for batch in input_lib.to_global(ds, sharding, config.input.prefetch): ...
    ds, num_batches = input_lib.make_eval_dataset(config, "val")

Batches follow docs/DESIGN.md: `{"image": {name: f32[b, r, r, 3]}, "label":
i32[b]}` plus `"_mask": f32[b]` in evaluation, where the names are "student"
and `config.teachers`, and `r = config.<name>_res`. `b` is this process's share
of the global batch; `to_global` assembles global `jax.Array`s.

Per training example: `input.pp` (deterministic, e.g. decode) -> the view(s)
(`distill.views`) -> a resize to each model's resolution -> `input.pp_post`
per model. Views:
  * 'consistent': one random view (`input.pp_random`) fed to every model; the
    paper's consistent teaching / function matching.
  * 'independent': each model gets its own random view of the same example
    (the paper's ind/ic): the teacher's target is noisy for the student.
  * 'fixed': teachers see the deterministic view `input.pp_fixed`, the student
    random views. The teachers' input depends only on the example (the
    paper's fix/cc). With `distill.fixed` set, their outputs are precomputed
    (precompute.py): the batch then holds the student's image only, and
    `"_index"`, each example's id, by which the trainer looks the targets up.

Randomness (crops, flips, shuffling) comes only from stateless seeds derived
from `config.seed`, so the stream is a function of (seed, step); see DESIGN.md
"Determinism" and `make_train_dataset`.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from typing import Any, Iterable, Iterator

import jax
import ml_collections as mlc
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_distill import errors
# The input choices, checked without TensorFlow; the pipeline's names too.
from big_distill.input_modes import (  # pylint: disable=unused-import
    CACHE_MODES, VIEWS, cache_mode, check_views, model_names)
from big_distill.data import datasets
from big_distill.data import pp as pp_lib

_INF = np.iinfo(np.int64).max
# Independent streams derived from config.seed.
_PERM, _AUG, _SHUFFLE, _EVAL = 1, 2, 3, 4


def local_batch_size(batch_size: int, process_count: int, what: str) -> int:
  """One process's share of the global `batch_size` (`what`: the config field)."""
  if batch_size % process_count:
    raise errors.ConfigError(f"{what}={batch_size} must be divisible by the number of "
                     f"processes ({process_count}).")
  return batch_size // process_count


def process_index_and_count(process_index, process_count) -> tuple[int, int]:
  """(this process's index, the process count): the given ones, else JAX's."""
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  if not 0 <= p < n:
    raise ValueError(f"process_index={p} is not in [0, process_count={n}).")
  return p, n


def with_pipeline_options(ds: tf.data.Dataset) -> tf.data.Dataset:
  """`ds` with the pipeline's options: deterministic, one thread per op."""
  options = tf.data.Options()
  options.deterministic = True
  # Parallelism comes from map(); one thread per op leaves cores to JAX.
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def _key(seed: int, stream: int) -> tf.Tensor:
  return tf.constant([seed, stream], tf.int64)


_fold_in = tf.random.experimental.stateless_fold_in


# ---- Per-example preprocessing: views and resolutions ----------------------


def to_model_input(image, res: int, post: pp_lib.PPFn, rng, name: str) -> tf.Tensor:
  """Resizes a view to a model's resolution, then applies pp_post."""
  image = tf.cast(image, tf.float32)
  if tuple(image.shape[:2]) != (res, res):
    image = tf.image.resize(image, (res, res), antialias=True)
  image = tf.cast(post({"image": image, "_rng": rng})["image"], tf.float32)
  fix = (f"The image for {name!r} must be [{res}, {res}, 3]; got {image.shape}. "
         "Add grayscale_to_rgb (or use decode(3)) in the pp string.")
  if image.shape.rank != 3 or image.shape[-1] not in (3, None):
    # A ValueError, not a ConfigError: tf.data's tracing turns any other type
    # into a StagingError, and this one reaches the caller as it is.
    raise ValueError(fix)
  with tf.control_dependencies([tf.debugging.assert_equal(tf.shape(image)[-1], 3, fix)]):
    return tf.ensure_shape(image, [res, res, 3])


def _output(images: dict, data: dict, config, post, rng) -> dict:
  """The image of each model in `images` (keys in model_names order: model i's
  pp_post gets the seed fold_in(rng, i)), and the label."""
  out = {"image": {n: to_model_input(images[n], config[f"{n}_res"], post,
                                _fold_in(rng, i), n)
                   for i, n in enumerate(images)}}
  if "label" in data:
    out["label"] = tf.cast(data["label"], tf.int32)
  return out


def _train_example_fn(config: mlc.ConfigDict, *, decoded: bool = False):
  """The per-example function of training: pp, views, resizes, pp_post.

  With `decoded`, `input.pp` was applied once when the examples were cached.
  """
  views = config.distill.views
  check_views(views)
  pre = pp_lib.parse(config.input.pp)
  rand = pp_lib.parse(config.input.pp_random)
  fixed = pp_lib.parse(config.input.pp_fixed)
  post = pp_lib.parse(config.input.pp_post)
  names = model_names(config)

  def fn(data):
    if not decoded:
      data = pre(data)
    if config.distill.fixed:
      return _student_only(data)
    if views == "consistent":
      images = dict.fromkeys(names, rand(data)["image"])
    elif views == "independent":
      images = {n: rand({**data, "_rng": _fold_in(data["_rng"], i)})["image"]
                for i, n in enumerate(names)}
    else:
      images = {**dict.fromkeys(names, fixed(data)["image"]),
                "student": rand(data)["image"]}
    return _output(images, data, config, post, _fold_in(data["_rng"], -1))

  def _student_only(data):
    # Precomputed teachers (distill.fixed): no teacher view to make; the
    # student's view is as with views='fixed' ('rs': the fixed one too).
    view = fixed if config.distill.fixed == "rs" else rand
    out = _output({"student": view(data)["image"]}, data, config, post,
                  _fold_in(data["_rng"], -1))
    return {**out, "_index": data["_index"]}
  return fn


# ---- Training --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Decoded:
  """A training set decoded once: uint8 pixels of every example, in id order.

  Example i is `flat[offsets[i]:offsets[i] + h*w*C]` reshaped to (h, w, C) with
  (h, w) = hw[i]; its id i is its position in the (balanced-subset) split.
  """
  flat: np.ndarray     # uint8[sum of h*w*C]
  offsets: np.ndarray  # int64[N]
  hw: np.ndarray       # int32[N, 2]
  channels: int
  labels: np.ndarray | None  # int32[N]

  @property
  def num_examples(self) -> int:
    return len(self.offsets)

  def image(self, i: int) -> np.ndarray:
    h, w = self.hw[i]
    o = self.offsets[i]
    return self.flat[o:o + h * w * self.channels].reshape(h, w, self.channels)

  def padded(self) -> np.ndarray:
    """uint8[N, Hmax, Wmax, C]: each image at the top left, zeros around it."""
    hmax, wmax = self.hw.max(0)
    out = np.zeros((self.num_examples, hmax, wmax, self.channels), np.uint8)
    for i in range(self.num_examples):
      h, w = self.hw[i]
      out[i, :h, :w] = self.image(i)
    return out


def _raw_examples(builder, data_config) -> tf.data.Dataset:
  """The raw examples of the training split (or its balanced subset), in id order."""
  raw = datasets.read_split(builder, data_config)
  if data_config.balanced_subset:
    raw = datasets.select_examples(raw, datasets.subset_mask(builder, data_config))
  return raw


def decode_training_set(config: mlc.ConfigDict) -> Decoded:
  """Applies `config.input.pp` once to every training example (host memory).

  `input.pp` must be deterministic (e.g. 'decode' or 'decode|resize_small(160)'):
  its result is reused at every epoch.
  """
  from big_distill import errors  # pylint: disable=g-import-not-at-top
  random = pp_lib.random_ops(config.input.pp)
  if random:
    raise errors.ConfigError(
        f"config.input.pp={config.input.pp!r} has random ops {random}, but with "
        f"config.input.cache={config.input.cache!r} it runs once per example and is "
        "reused every epoch. Move them to config.input.pp_random.")
  data_config = config.input.data
  builder = datasets.tfds_builder(data_config)
  pre = pp_lib.parse(config.input.pp)

  def fn(ex):
    out = pre(dict(ex))
    image = tf.convert_to_tensor(out["image"])
    if image.dtype != tf.uint8:
      image = tf.cast(tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0, 255), tf.uint8)
    kept = {"image": image}
    if "label" in out:
      kept["label"] = tf.cast(out["label"], tf.int32)
    return kept

  ds = with_pipeline_options(_raw_examples(builder, data_config).map(
      fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
  images, labels = [], []
  for ex in ds.as_numpy_iterator():
    images.append(ex["image"])
    if "label" in ex:
      labels.append(ex["label"])
  if not images:
    raise ValueError(f"{data_config.name} {data_config.split} has no examples.")
  if images[0].ndim != 3:
    raise errors.ConfigError(
        f"config.input.pp={config.input.pp!r} gives images of shape {images[0].shape}; "
        "the decoded cache needs [height, width, channels] (decode first).")
  sizes = np.array([im.size for im in images], np.int64)
  return Decoded(
      flat=np.concatenate([im.reshape(-1) for im in images]),
      offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
      hw=np.array([im.shape[:2] for im in images], np.int32),
      channels=int(images[0].shape[-1]),
      labels=np.array(labels, np.int32) if labels else None)


def _global_positions(config, start_step, p, P, n):
  """(position g, example id, RNG) of this process's rows of every global batch.

  Global position g = step * B + i takes example perm_epoch[g % N] (a
  stateless permutation per epoch) with the RNG fold_in(seed, g); process p
  takes rows [p*b, (p+1)*b) of every global batch. So the global batches are
  the same for any number of processes, and resuming is exact.
  """
  B, b = config.input.batch_size, config.input.batch_size // P
  perm_key, aug_key = _key(config.seed, _PERM), _key(config.seed, _AUG)

  def position(j):
    g = (j // b) * B + p * b + j % b
    idx = tf.random.experimental.index_shuffle(
        g % n, seed=_fold_in(perm_key, g // n), max_index=n - 1)
    return idx, _fold_in(aug_key, g)
  return tf.data.Dataset.range(start_step * b, _INF).map(position)


def _decoded_stream(decoded: Decoded, config, start_step, p, P) -> tf.data.Dataset:
  """As `_cached_stream`, over decoded pixels (no decoding per step)."""
  flat = tf.constant(decoded.flat)
  offsets = tf.constant(decoded.offsets)
  hw = tf.constant(decoded.hw.astype(np.int64))
  labels = None if decoded.labels is None else tf.constant(decoded.labels)
  c = decoded.channels
  uniform = (decoded.hw == decoded.hw[0]).all()

  def element(idx, rng):
    size = hw[idx]
    image = tf.reshape(flat[offsets[idx]:offsets[idx] + size[0] * size[1] * c],
                       tf.concat([size, [c]], 0))
    image = (tf.ensure_shape(image, [*decoded.hw[0], c]) if uniform
             else tf.ensure_shape(image, [None, None, c]))
    ex = {"image": image, "_rng": rng, "_index": tf.cast(idx, tf.int32)}
    if labels is not None:
      ex["label"] = labels[idx]
    return ex
  return _global_positions(config, start_step, p, P, decoded.num_examples).map(element)


def _cached_stream(builder, config, start_step, p, P) -> tf.data.Dataset:
  """One global random-access sequence over the raw examples held in memory.

  The positions, ids and RNGs of `_global_positions`: the same global batches
  for any number of processes, and exact resumes.
  """
  data_config = config.input.data
  chunks = list(_raw_examples(builder, data_config).batch(8192).as_numpy_iterator())
  if not chunks:
    raise errors.DataError(f"{data_config.name} {data_config.split} has no examples: "
                           "check config.input.data.split.")
  arrays = {k: tf.constant(np.concatenate([c[k] for c in chunks])) for k in chunks[0]}
  n = int(arrays["image"].shape[0])

  def element(idx, rng):
    ex = {k: tf.gather(v, idx) for k, v in arrays.items()}
    return {**ex, "_rng": rng, "_index": tf.cast(idx, tf.int32)}
  return _global_positions(config, start_step, p, P, n).map(element)


def _streamed(builder, config, start_step, p, P) -> tf.data.Dataset:
  """This process's share, shuffled per epoch with a seeded buffer.

  Example k of the process's stream gets the RNG fold_in(seed, p, k); a resume
  at `start_step` starts at its epoch and skips inside it (exact for an
  unchanged number of processes).
  """
  data_config = config.input.data
  if data_config.balanced_subset:
    mask = datasets.subset_mask(builder, data_config)
    raw = datasets.select_examples(datasets.read_split(builder, data_config), mask)
    raw, n = raw.shard(P, p), len(range(p, data_config.balanced_subset, P))
  else:
    split = tfds.split_for_jax_process(data_config.split, process_index=p,
                                       process_count=P)
    raw = datasets.read_split(builder, data_config, split, shuffle_seed=config.seed * 1009 + p)
    n = int(raw.cardinality())
    if n < 0:
      n = int(raw.reduce(0, lambda c, _: c + 1))
  if n == 0:
    raise errors.DataError(f"Process {p} of {P} got no examples of {data_config.name} "
                     f"{data_config.split}.")
  shuffle_key = _fold_in(_key(config.seed, _SHUFFLE), p)
  aug_key = _fold_in(_key(config.seed, _AUG), p)
  buffer = min(config.input.shuffle_buffer_size, n)

  def epoch(e):
    seed = tf.random.stateless_uniform([], _fold_in(shuffle_key, e), minval=None,
                                       maxval=None, dtype=tf.int64)
    return raw.shuffle(buffer, seed=seed, reshuffle_each_iteration=False).enumerate(e * n)

  start = start_step * (config.input.batch_size // P)
  ds = tf.data.Dataset.range(start // n, _INF).flat_map(epoch).skip(start % n)
  return ds.map(lambda k, ex: {**ex, "_rng": _fold_in(aug_key, k)})


def make_train_dataset(config: mlc.ConfigDict, *, start_step: int = 0,
                       process_index: int | None = None,
                       process_count: int | None = None,
                       decoded: Decoded | None = None) -> tf.data.Dataset:
  """This process's infinite stream of training batches, from `start_step` on.

  Batches hold `config.input.batch_size // process_count` examples. The stream
  is a function of (config.seed, step): `start_step=N` yields the batches that
  an uninterrupted stream yields from step N on. With `config.input.cache`
  "encoded" or "decoded" the examples are held in memory and the stream is one
  global sequence (see `_global_positions`); with "none" each process streams
  its own share. ("device" makes its batches in the train step instead.)
  `decoded`: the result of `decode_training_set(config)`, if already made.
  """
  p, P = process_index_and_count(process_index, process_count)
  b = local_batch_size(config.input.batch_size, P, "config.input.batch_size")
  mode = cache_mode(config)
  if mode == "device":
    raise ValueError("config.input.cache='device' makes its batches on the devices "
                     "(data/device.py); there is no host stream to build.")
  example_fn = _train_example_fn(config, decoded=mode == "decoded")  # Fails early.
  if mode == "decoded":
    ds = _decoded_stream(decoded or decode_training_set(config), config, start_step, p, P)
  else:
    builder = datasets.tfds_builder(config.input.data)
    stream = _cached_stream if mode == "encoded" else _streamed
    ds = stream(builder, config, start_step, p, P)
  ds = ds.map(example_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return with_pipeline_options(ds)


# ---- Evaluation ------------------------------------------------------------


def make_eval_dataset(config: mlc.ConfigDict, evaluation: str | mlc.ConfigDict, *,
                      process_index: int | None = None,
                      process_count: int | None = None) -> tuple[tf.data.Dataset, int]:
  """Deterministic evaluation batches of this process, and how many there are.

  `evaluation` is a name in `config.evals` or an eval config. Every example of
  the split is in exactly one process's batches once; the rest is padding with
  "_mask" 0. Every process yields the same number of batches, as a collective
  (jitted) evaluation needs. Each model's image is a resize of the one view
  made by the eval's `pp` (which includes value_range; no pp_post).

  Build it once and iterate it at every evaluation: it is re-iterable and
  yields the same batches each time, and with the eval's `cache_raw` only the
  first pass reads files (a new data set object would read them again).
  """
  ec = config.evals[evaluation] if isinstance(evaluation, str) else evaluation
  p, P = process_index_and_count(process_index, process_count)
  b = local_batch_size(ec.batch_size or config.input.batch_size, P, "eval batch_size")
  pre = pp_lib.parse(ec.pp)
  builder = datasets.tfds_builder(ec.data)
  if ec.data.balanced_subset:
    n = datasets.num_examples(ec.data)
    mask = datasets.subset_mask(builder, ec.data)
    raw = datasets.select_examples(datasets.read_split(builder, ec.data), mask)
    raw = raw.shard(P, p)
  else:
    n = datasets.split_size(builder, ec.data)
    raw = datasets.read_split(builder, ec.data, tfds.even_splits(ec.data.split, n=P)[p])
  if ec.cache_raw:
    raw = raw.cache()
  num_batches = -(-(-(-n // P)) // b)  # ceil(ceil(n / P) / b)
  key = _key(config.seed, _EVAL)
  identity = pp_lib.parse("")

  def fn(i, data):
    data = pre({**data, "_rng": _fold_in(key, i)})
    images = dict.fromkeys(model_names(config), data["image"])
    return {**_output(images, data, config, identity, data["_rng"]), "_mask": 1.0}

  ds = raw.enumerate().map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  try:
    pad = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
  except (TypeError, ValueError):
    raise errors.ConfigError(f"Eval pp {ec.pp!r} gives examples of unknown shape "
                     f"{ds.element_spec}; padding needs fixed shapes.") from None
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat())
  ds = ds.take(num_batches * b).batch(b).prefetch(tf.data.AUTOTUNE)
  return with_pipeline_options(ds), num_batches


# ---- To the devices --------------------------------------------------------


def to_global(iterator: Iterable[Any] | tf.data.Dataset,
              sharding: jax.sharding.Sharding, prefetch: int = 2) -> Iterator[Any]:
  """Yields each process-local batch as global jax.Arrays, `prefetch` ahead.

  `sharding` (e.g. NamedSharding(mesh, P(("data", "fsdp")))) shards the
  leading (batch) axis; every process passes its own rows. Transfers are
  asynchronous, so keeping `prefetch` batches in flight overlaps them with the
  train step.
  """
  if isinstance(iterator, tf.data.Dataset):
    iterator = iterator.as_numpy_iterator()
  iterator = iter(iterator)
  queue = collections.deque()

  def put(n):
    for batch in itertools.islice(iterator, n):
      queue.append(jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(sharding, x), batch))

  put(max(prefetch, 1))
  while queue:
    yield queue.popleft()
    put(1)
