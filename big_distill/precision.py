r"""bfloat16 against float32 logits of a config's models, on one batch.

    python -m big_distill.precision --config=configs/flowers_r50.py:runlocal \
        [--config.t1_init=T.npz] [--batch=32]

Prints one JSON line. float32: float32 weights and compute. bfloat16: as the
trainer runs it, the student with float32 weights and bfloat16 compute,
teachers with weights cast to bfloat16 once (`weights.put_teacher`). Weights
come from the models' checkpoints where the config's `*_init` files exist
(`weights`), else they are random; images are a batch of the config's data
where it is prepared (`images`), else synthetic.

Per model: the relative L2 error of the logits, the largest absolute
difference, top-1 agreement, the mean KL(float32 || bfloat16) of the softmax
(how far the distillation target moves), and, as the scale to read them
against, `sensitivity`: how far float32 logits move when only the input
images are rounded to bfloat16. Random networks at small resolutions are
chaotic, so that scale matters (tests/test_bit.py bounds the model's own
bfloat16 error by it); `within_tolerance` asks rel_l2 <= BF16_RATIO_TOL x
max(sensitivity, BF16_EPS) for every model.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections as mlc
from ml_collections import config_flags
import numpy as np

from big_distill import distill
from big_distill import config_lib
from big_distill import errors
from big_distill import checks
from big_distill import model_set
from big_distill import setup
from big_distill import weights
from big_distill.data import datasets
from big_distill.data import input as input_lib

# bfloat16 logits may differ from float32 ones (relative L2) by at most this
# many times the network's own sensitivity: the change of float32 logits when
# only the input is rounded to bfloat16, floored at bfloat16's precision (2^-8:
# a network insensitive to its input still has every activation, and a
# teacher every weight, rounded). Teachers run with bfloat16 *weights*
# (the trainer casts them once), on top of the bfloat16 activations that
# tests/test_bit.py bounds for the model alone (measured there: ~3x).
BF16_EPS = 2.0**-8
BF16_RATIO_TOL = 5.0


def _predict_fn(config: mlc.ConfigDict, dtype: str, which: tuple[str, ...]) -> Callable:
  c = mlc.ConfigDict(config.to_dict())
  c.compute_dtype = dtype
  predict = setup.make_predict(model_set.build_models(c))
  jitted = jax.jit(lambda params, images: predict(
      params["student"], {t: params[t] for t in which if t != "student"}, images, which))
  return lambda params, images: {k: np.asarray(v, np.float64)
                                 for k, v in jitted(params, images).items()}


def _synthetic_images(res: dict[str, int], batch_size: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {name: rng.uniform(-1, 1, (batch_size, r, r, 3)).astype(np.float32)
          for name, r in res.items()}


def _inputs(config: mlc.ConfigDict, models: model_set.Models, batch_size: int):
  """(images, source): a batch of the config's training data where it is
  prepared (trained weights see the images they know), else synthetic."""
  try:
    datasets.check_prepared(config.input.data)
  except errors.UserError:
    return _synthetic_images(models.res, batch_size), "synthetic"
  batch = next(input_lib.make_train_dataset(config).as_numpy_iterator())
  return {k: np.asarray(v[:batch_size], np.float32) for k, v in batch["image"].items()}, "data"


def _params(config: mlc.ConfigDict, models: model_set.Models, which) -> tuple:
  """float32 variables per model, from its checkpoint (`config.student_init`,
  `config.<teacher>_init`) where that file exists, else random; and which."""
  rng = jax.random.key(config.seed, impl="unsafe_rbg")
  all_models = {"student": models.student, **models.teachers}
  params = jax.jit(lambda: {
      name: weights.random_params(all_models[name], models.res[name],
                                jax.random.fold_in(rng, i)) for i, name in enumerate(which)})()
  params = jax.device_get(params)
  source = {}
  for name in which:
    path = config.get(f"{name}_init")
    source[name] = "random"
    try:
      found = bool(path) and checks.readable(path, f"{name}_init") and bool(
          checks.resolve_init(path))
    except errors.UserError:  # Unreachable or unfinished: random weights instead.
      found = False
    if found:
      model = models.student if name == "student" else models.configured[name]
      params[name] = weights.load_weights(config, name, model, path, template=params[name])
      if name != "student":  # As the trainer runs teachers: frozen.
        params[name] = weights.freeze(config, models, name, params[name])
      source[name] = f"checkpoint {path}"
  return params, source


def compare(config: mlc.ConfigDict, batch_size: int | None = None) -> dict[str, Any]:
  """The figures of the module docstring, as a dict."""
  checks.check_config(config)
  models = model_set.build_models(config)
  which = ("student", *models.teachers)
  batch_size = batch_size or min(config.input.batch_size, 32)
  images, image_source = _inputs(config, models, batch_size)
  rounded = jax.tree.map(lambda x: np.asarray(x.astype(jnp.bfloat16), np.float32), images)
  params, sources = _params(config, models, which)
  bf16 = {k: v if k == "student" else jax.tree.map(lambda x: x.astype(jnp.bfloat16), v)
          for k, v in params.items()}
  predict32 = _predict_fn(config, "float32", which)
  l32, l32_rounded = predict32(params, images), predict32(params, rounded)
  l16 = _predict_fn(config, "bfloat16", which)(bf16, images)
  rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(a))
  out = {"mode": "precision", "device_kind": jax.devices()[0].device_kind, "batch": batch_size,
         "images": image_source, "weights": sources, "ratio_tol": BF16_RATIO_TOL,
         "models": {}}
  for name in which:
    a, b = l32[name], l16[name]
    kl = distill.kl(jnp.asarray(b, jnp.float32), jnp.asarray(a, jnp.float32))
    m = out["models"][name] = {
        "rel_l2": rel(a, b), "sensitivity": rel(a, l32_rounded[name]),
        "max_abs": float(np.abs(a - b).max()), "logit_std": float(a.std()),
        "top1_agree": float(np.mean(a.argmax(-1) == b.argmax(-1))),
        "kl": float(jnp.mean(kl))}
    m["tolerance"] = BF16_RATIO_TOL * max(m["sensitivity"], BF16_EPS)
  out["within_tolerance"] = all(m["rel_l2"] <= m["tolerance"] for m in out["models"].values())
  return out


def define_flags(values: flags.FlagValues | None = None) -> None:
  """The command's flags (only when run as a command: importing defines none)."""
  values = values if values is not None else flags.FLAGS
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. "
                                  "configs/flowers_r50.py:runlocal.", flag_values=values,
                                  lock_config=True)
  flags.DEFINE_integer("batch", None, "Images compared (default: min(batch size, 32)).",
                       flag_values=values)


def main(argv):
  del argv
  f = flags.FLAGS
  if not f["config"].present:
    raise app.UsageError("Give --config=configs/X.py[:args].")
  with errors.reported("big_distill.precision"):
    out = compare(f.config, f.batch)  # The config file runs here: its errors are caught too.
  print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=config_lib.flags_parser("big_distill.precision"))
