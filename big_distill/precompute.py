"""Teacher outputs computed once, for the paper's fixed-teacher baselines.

The paper (Section 3.1.1) contrasts function matching with teachers whose
outputs depend on the image alone, so that they are computed once per image
and reused at every epoch (`config.distill.fixed`, with `distill.views =
"fixed"` and no mixup):

  * "rs" (fix/rs): the whole image resized (`input.pp_fixed`, e.g.
    `resize(128)`), for BOTH models: the student sees that same fixed view.
  * "cc" (fix/cc): the teachers see a fixed central crop (`input.pp_fixed`,
    e.g. `resize_small(160)|central_crop(128)`); the student mild random crops
    (`input.pp_random`, e.g. a random crop of the short-side-resized image).
  * "ic_ens" (fix/ic_ens): the teachers' prediction is the average, over
    `distill.ensemble_crops` (1,000 in the paper) crops of the image made by
    `input.pp_random` (crop k of example i drawn from the stateless seed
    `crop_seed(config.seed, i, k)`), of their *probabilities* at the
    distillation temperature t; the student gets random `input.pp_random`
    crops. The table holds `t * log(mean_k softmax(z_k / t))`: pseudo-logits
    whose softmax at temperature t is exactly that average, so the `kl` (and
    `hard`) losses use them unchanged. Distances of raw logits (`euclidean`
    losses) have no such equivalent and are refused.

Before training, `load_or_compute` makes one pass over the training set in
example-id order (id = position in the (balanced-subset) training split, the
ids the cached training stream emits as `_index`), sharded over the mesh and
the processes like an evaluation: every example (every crop) exactly once,
padded batches with a mask. The forward's outputs come back replicated, so
every process ends with the whole table `{teacher: f32[N, num_classes]}`.
Process 0 writes it to `WORKDIR/teacher_outputs.npz` with a fingerprint of
everything it depends on (the teachers' parameter bytes, model kwargs and
resolutions, the pp strings, the kind, seed, compute dtype, the data, and for
ic_ens the crop count and temperature); a resumed run with the same
fingerprint loads it, any change recomputes it (and logs what changed).

The train step then has no teacher forward: `with_targets` looks each
example's targets up by its id on the host, before the batch goes to the
devices (`lookup` does the same on device arrays, for a device-resident
input).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from typing import Any, Iterable, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from big_distill import errors
from big_distill import fileio
from big_distill import parallel

# TensorFlow and the input pipeline are imported by the functions that read
# data: the checks of a config (`check_config`) and the train step's lookup
# of the tables need neither.

KINDS = ("rs", "cc", "ic_ens")
FILE = "teacher_outputs.npz"
# Losses on raw logits: ic_ens's pseudo-logits are only defined up to a shift.
_LOGIT_LOSSES = ("euclidean", "logsoftmax_euclidean")
_CROPS = 6  # Seed stream of the ensemble's crops (data/input.py uses 1-4).


# ---- Checks -------------------------------------------------------------------


def cached_input(config: mlc.ConfigDict) -> bool:
  """Whether the training stream is a host cache (the streams that emit ids)."""
  return config.input.cache in ("encoded", "decoded")


def check_config(config: mlc.ConfigDict) -> None:
  """`config.distill.fixed` and what it needs, checked before any work."""
  kind = config.distill.fixed
  if not kind:
    return
  where = f"config.distill.fixed={kind!r}"
  if kind not in KINDS:
    raise errors.ConfigError(f"{where}: must be '' (off) or one of {KINDS}.")
  if config.distill.views != "fixed":
    raise errors.ConfigError(
        f"{where} needs config.distill.views='fixed' (got {config.distill.views!r}): "
        "precomputed teacher outputs exist only for views that depend on the image alone.")
  if config.mixup.p:
    raise errors.ConfigError(
        f"{where} needs mixup off (config.mixup.p={config.mixup.p}): a target computed "
        "once per image cannot follow a mixed image. Set --config.mixup.p=0.")
  if not config.teachers:
    raise errors.ConfigError(f"{where} needs teachers; config.teachers is empty.")
  if not cached_input(config):
    raise errors.ConfigError(
        f"{where} looks the teachers' outputs up by example id in host memory, which the "
        "host caches provide: set --config.input.cache=encoded or decoded (got "
        f"{config.input.cache!r}; the device cache does not carry precomputed targets: "
        "a fixed teacher has no teacher forward in the step, so the host keeps up).")
  if kind == "ic_ens":
    if config.distill.loss in _LOGIT_LOSSES:
      raise errors.ConfigError(
          f"{where} averages probabilities, so the targets are pseudo-logits known only "
          f"up to a constant; config.distill.loss={config.distill.loss!r} compares raw "
          "logits. Use loss 'kl' (or 'hard').")
    crops = config.distill.ensemble_crops
    if not isinstance(crops, int) or crops < 1:
      raise errors.ConfigError(
          f"config.distill.ensemble_crops={crops!r}: must be a positive integer "
          "(the paper averages 1000 crops).")
  if kind == "ic_ens" and config.distill.loss == "kl" and config.distill.t <= 0:
    raise errors.ConfigError(f"config.distill.t={config.distill.t}: must be > 0.")


def teacher_pp(config: mlc.ConfigDict) -> str:
  """The pp string of the teachers' view: pp_random's crops for ic_ens, else pp_fixed."""
  return config.input.pp_random if config.distill.fixed == "ic_ens" else config.input.pp_fixed


def num_views(config: mlc.ConfigDict) -> int:
  """Teacher forwards per example: the crops of ic_ens, else 1."""
  return config.distill.ensemble_crops if config.distill.fixed == "ic_ens" else 1


def crop_seed(seed: int, index, k) -> tf.Tensor:
  """The stateless seed of crop k of example `index` (ic_ens)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  base = tf.constant([seed, _CROPS], tf.int64)
  fold = tf.random.experimental.stateless_fold_in
  return fold(fold(base, tf.cast(index, tf.int64)), tf.cast(k, tf.int64))


# ---- The pass over the training set ---------------------------------------------


def make_dataset(config: mlc.ConfigDict, *, process_index: int | None = None,
                 process_count: int | None = None) -> tuple[tf.data.Dataset, int]:
  """This process's batches of teacher views, in id order, and how many there are.

  Batches: `{"image": {teacher: f32[b, r, r, 3]}, "_index": i32[b], "_mask":
  f32[b]}` with `b = input.batch_size // processes`. Process p takes the
  examples p, p + P, ...; for ic_ens each example `ensemble_crops` times in a
  row (crop k with `crop_seed(seed, id, k)`). Every process yields the same
  number of batches (padding has mask 0), as the collective forward needs.
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from big_distill.data import datasets
  from big_distill.data import input as input_lib
  from big_distill.data import pp as pp_lib
  # pylint: enable=g-import-not-at-top
  p, P = input_lib.process_index_and_count(process_index, process_count)
  b = input_lib.local_batch_size(config.input.batch_size, P, "config.input.batch_size")
  data_config = config.input.data
  builder = datasets.tfds_builder(data_config)
  n = datasets.num_examples(data_config)
  raw = datasets.read_split(builder, data_config)
  if data_config.balanced_subset:
    raw = datasets.select_examples(raw, datasets.subset_mask(builder, data_config))
  crops = num_views(config)
  pre = pp_lib.parse(config.input.pp)
  view = pp_lib.parse(teacher_pp(config))
  post = pp_lib.parse(config.input.pp_post)
  teachers = tuple(config.teachers)

  def fn(index, k, data):
    data = pre(dict(data))
    # The same view for every teacher (each resized to its resolution), as
    # the trainer's views='fixed' feeds them.
    data = view({**data, "_rng": crop_seed(config.seed, index, k)})
    rng = tf.random.experimental.stateless_fold_in(data["_rng"], -1)
    images = {t: input_lib.to_model_input(data["image"], config[f"{t}_res"], post,
                                     tf.random.experimental.stateless_fold_in(rng, i), t)
              for i, t in enumerate(teachers)}
    return {"image": images, "_index": tf.cast(index, tf.int32), "_mask": 1.0}

  ds = raw.enumerate().shard(P, p)
  ds = ds.flat_map(lambda i, ex: tf.data.Dataset.range(crops).map(lambda k: (i, k, ex)))
  ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  num_batches = -(-math.ceil(n / P) * crops // b)
  pad = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(pad).repeat())
  ds = ds.take(num_batches * b).batch(b).prefetch(tf.data.AUTOTUNE)
  return input_lib.with_pipeline_options(ds), num_batches


def make_forward(config: mlc.ConfigDict, models, mesh) -> Any:
  """`(teacher_params, batch) -> ({teacher: f32[B, K]}, index, mask)`, replicated.

  Raw logits, or for ic_ens `log_softmax(z / t)` per crop (averaged on the
  host). Replicated outputs: every process receives every row, which is the
  all-gather that gives each process the whole table.
  """
  ic_ens = config.distill.fixed == "ic_ens"
  t = config.distill.t

  def forward(teacher_variables, batch):
    out = {}
    for name, model in models.teachers.items():
      z = model.apply(teacher_variables[name], batch["image"][name], train=False)[0]
      z = z.astype(jnp.float32)
      out[name] = jax.nn.log_softmax(z / t) if ic_ens else z
    return out, batch["_index"], batch["_mask"]

  return jax.jit(forward, in_shardings=(None, parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


def compute(config: mlc.ConfigDict, models, mesh, teacher_params) -> dict[str, np.ndarray]:
  """The tables `{teacher: f32[N, K]}`: one pass over the training set.

  Call it on every process (the forward is a collective); each gets the
  whole table.
  """
  from big_distill.data import datasets  # pylint: disable=g-import-not-at-top
  from big_distill.data import input as input_lib  # pylint: disable=g-import-not-at-top
  n = datasets.num_examples(config.input.data)
  crops = num_views(config)
  ic_ens = config.distill.fixed == "ic_ens"
  ds, num_batches = make_dataset(config)
  forward = make_forward(config, models, mesh)
  logging.info("Precomputing the teachers' outputs (distill.fixed=%r): %d examples x %d "
               "view(s), %d batches.", config.distill.fixed, n, crops, num_batches)
  sums: dict[str, np.ndarray] = {}
  seen = np.zeros(n, np.int64)
  every = max(num_batches // 10, 1)
  for i, batch in enumerate(input_lib.to_global(ds, parallel.batch_sharding(mesh))):
    out, index, mask = jax.device_get(forward(teacher_params, batch))
    keep = np.asarray(mask) > 0
    ids = np.asarray(index)[keep]
    np.add.at(seen, ids, 1)
    for t, values in out.items():
      if t not in sums:
        # ic_ens: log of the summed probabilities, in float64 log space (no
        # underflow of small probabilities over 1,000 crops).
        sums[t] = np.full((n, values.shape[-1]), -np.inf if ic_ens else np.nan,
                          np.float64 if ic_ens else np.float32)
      if ic_ens:
        np.logaddexp.at(sums[t], ids, values[keep].astype(np.float64))
      else:
        sums[t][ids] = values[keep]
    if (i + 1) % every == 0 or i + 1 == num_batches:
      logging.info("Precomputing the teachers' outputs: batch %d of %d.", i + 1, num_batches)
  if not np.all(seen == crops):
    bad = np.flatnonzero(seen != crops)[:5].tolist()
    raise AssertionError(f"Examples {bad} were seen {seen[bad].tolist()} times, not {crops}.")
  if ic_ens:
    t = config.distill.t
    return {k: (t * (v - math.log(crops))).astype(np.float32) for k, v in sums.items()}
  return sums


# ---- Fingerprint, file, reuse ---------------------------------------------------


def _tree_sha256(tree: Any) -> str:
  h = hashlib.sha256()
  for path, x in sorted(jax.tree_util.tree_flatten_with_path(tree)[0],
                        key=lambda kv: jax.tree_util.keystr(kv[0])):
    x = np.ascontiguousarray(np.asarray(x))
    h.update(f"{jax.tree_util.keystr(path)}|{x.dtype.str}|{x.shape}|".encode())
    h.update(x.tobytes())
  return h.hexdigest()


def _variables_sha256(variables: dict[str, Any]) -> str:
  """A model's variables' sha256: of the params tree alone when that is all
  there is (as the fingerprints of workdirs written before teachers were
  carried as variables dicts), else of the whole dict."""
  return _tree_sha256(variables["params"] if set(variables) == {"params"} else variables)


def describe(config: mlc.ConfigDict, teacher_params: Any, mesh) -> dict[str, Any]:
  """Everything the tables depend on, and its sha256 (`["sha256"]`).

  The teachers' parameters enter by their bytes (as the step runs them, i.e.
  cast to the compute dtype), not by their file's path. The crop count and the
  temperature enter for ic_ens only: rs and cc store raw logits, which
  neither changes. Collective (gathers sharded teachers): call it on every
  process.
  """
  from big_distill.data import datasets  # pylint: disable=g-import-not-at-top
  host = parallel.to_host(teacher_params, mesh)
  d = config.input.data
  desc = {
      "fixed": config.distill.fixed,
      "seed": config.seed,
      "compute_dtype": config.compute_dtype,
      "data": {"name": d.name, "split": d.split, "balanced_subset": d.balanced_subset,
               "num_examples": datasets.num_examples(d),
               **({"classes": list(d.classes)} if d.get("classes") is not None else {})},
      "pp": {"pp": config.input.pp, "view": teacher_pp(config), "post": config.input.pp_post},
      "teachers": {t: {"model": config[f"{t}_name"], "kwargs": config[t].to_dict(),
                       "res": config[f"{t}_res"], "params_sha256": _variables_sha256(host[t])}
                   for t in config.teachers},
  }
  if config.distill.fixed == "ic_ens":
    desc["ensemble_crops"] = config.distill.ensemble_crops
    desc["t"] = config.distill.t
  desc["sha256"] = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
  return desc


def _changes(old: dict, new: dict, prefix: str = "") -> list[str]:
  out = []
  for k in sorted(set(old) | set(new)):
    if k == "sha256" and not prefix:
      continue
    a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += _changes(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


def save(path: str, desc: dict[str, Any], tables: dict[str, np.ndarray]) -> None:
  """The tables and their description as one `.npz`, written atomically."""
  fileio.write_npz(path, {"fingerprint": np.array(json.dumps(desc, sort_keys=True)),
                          **{f"teacher/{t}": v for t, v in tables.items()}})


def read(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
  """(description, tables) of a file `save` wrote; None if absent or unreadable."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile: gs:// workdirs)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      with np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
        desc = json.loads(str(z["fingerprint"]))
        tables = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("teacher/")}
  except (OSError, ValueError, KeyError) as e:
    logging.warning("%s cannot be read (%s): computing the teacher outputs again.", path, e)
    return None
  return desc, tables


def load_or_compute(config: mlc.ConfigDict, models, mesh, teacher_params,
                    workdir: str) -> dict[str, np.ndarray]:
  """The tables of `config`: from `workdir` if its fingerprint matches, else computed.

  Every process calls it: the fingerprint and the pass are collectives, and
  the processes agree on reusing the file only if all of them can read it.
  Process 0 writes the computed tables.
  """
  desc = describe(config, teacher_params, mesh)
  path = os.path.join(workdir, FILE)
  stored = read(path)
  reuse = stored is not None and stored[0].get("sha256") == desc["sha256"]
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    reuse = bool(np.all(multihost_utils.process_allgather(np.int32(reuse))))
  if reuse:
    logging.info("Loaded the precomputed teacher outputs from %s (fingerprint %s).",
                 path, desc["sha256"][:16])
    return stored[1]
  if stored is not None:
    changed = _changes(stored[0], desc) or ["(another process cannot read it)"]
    logging.info("Recomputing the teacher outputs: %s was made for another set-up: %s",
                 path, "; ".join(changed))
  tables = compute(config, models, mesh, teacher_params)
  if jax.process_index() == 0:
    save(path, desc, tables)
    logging.info("Wrote %s (fingerprint %s).", path, desc["sha256"][:16])
  return tables


# ---- In the train step ------------------------------------------------------------


def lookup(tables: dict[str, Any], index) -> dict[str, Any]:
  """Each teacher's targets of the examples `index` (numpy, or device arrays in a step)."""
  return {t: table[index] for t, table in tables.items()}


def with_targets(batches: Iterable[dict], tables: dict[str, np.ndarray]) -> Iterator[dict]:
  """Host batches with `"_index"` replaced by `"teacher_logits"` {teacher: f32[b, K]}."""
  for batch in batches:
    batch = dict(batch)
    batch["teacher_logits"] = lookup(tables, batch.pop("_index"))
    yield batch
