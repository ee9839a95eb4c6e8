"""The one place that says which config fields exist, and how durations work.

Every experiment config starts from `base()` and changes what it needs. The
base config is locked before it is handed to a user, so a misspelt key from a
config file or from the shell (`--config.lrr=1`) is an error, and the resolved
config written to the workdir shows every field the run used: there are no
defaults hidden in the trainer.

Durations (`total`, warm-up, log, eval and checkpoint periods) can be given in
steps, epochs or examples: `total_steps`, `total_epochs` or `total_examples`,
and the same for every prefix. `steps()` converts them.
"""

from __future__ import annotations

import math
import os
import re
import sys
from typing import Any

import ml_collections as mlc

from big_distill import errors


def parse_arg(arg: str | None, **defaults: Any) -> mlc.ConfigDict:
  """Parses a config argument like `variant=fast,runlocal` into a ConfigDict.

  A bare word (`runlocal`) means True. Values are converted to the type of the
  default of the same name. Unknown names are errors, so that a typo such as
  `:varient=fast` does not silently run the default recipe.
  """
  out = dict(defaults)
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    name, eq, value = part.partition("=")
    name = name.strip()
    if name not in defaults:
      raise errors.ConfigError(
          f"Unknown config argument {name!r} in {arg!r}. Known arguments: "
          f"{', '.join(sorted(defaults))}. Example: "
          "--config=configs/flowers_r50.py:variant=fast,runlocal")
    default = defaults[name]
    if not eq:
      out[name] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise errors.ConfigError(f"Config argument {name}={value!r}: expected true or false.")
      out[name] = value.lower() in ("true", "1")
    elif isinstance(default, (int, float)):
      try:
        out[name] = type(default)(value)
      except ValueError:
        raise errors.ConfigError(
            f"Config argument {name}={value!r} in {arg!r}: expected "
            f"{'an integer' if isinstance(default, int) else 'a number'}.") from None
    else:
      out[name] = value
  return mlc.ConfigDict(out)


def _duration(c: mlc.ConfigDict, prefix: str) -> None:
  for unit in ("steps", "epochs", "examples"):
    c[f"{prefix}_{unit}"] = mlc.FieldReference(None, field_type=float if unit == "epochs" else int)


def data_config() -> mlc.ConfigDict:
  """Where examples come from."""
  return mlc.ConfigDict(dict(
      name="",                # TFDS name, e.g. 'oxford_flowers102'.
      split="train",          # TFDS split string, e.g. 'train[:90%]'.
      data_dir=mlc.FieldReference(None, field_type=str),  # Local or gs://; None = TFDS default.
      # A fixed, class-balanced subset: this many examples in total, the first
      # ones of each class in the split's order (the 1,020-image setting).
      balanced_subset=mlc.FieldReference(None, field_type=int),
      # With balanced_subset: take it from these label ids only (e.g. (1, 3, 5)),
      # balanced over them; None = every class.
      classes=mlc.FieldReference(None, field_type=tuple),
  ))


def eval_config() -> mlc.ConfigDict:
  """One evaluator: its own data, preprocessing and period."""
  c = mlc.ConfigDict(dict(
      type="classification",  # 'classification' | 'distance' | 'calibration'.
      data=data_config(),
      pp="decode|resize_small(160)|central_crop(128)|value_range(-1, 1)",
      batch_size=mlc.FieldReference(None, field_type=int),  # None: the training batch size.
      cache_raw=False,
      # Which models to evaluate: 'student', teacher names, or 'all'.
      models="all",
      ece_bins=15,
  ))
  _duration(c, "log")
  return c


def base() -> mlc.ConfigDict:
  """Every field a big_distill run reads, with its default."""
  c = mlc.ConfigDict()
  c.seed = 0
  _duration(c, "total")

  # ---- Input -------------------------------------------------------------
  c.input = mlc.ConfigDict()
  c.input.data = data_config()
  c.input.batch_size = 512
  c.input.shuffle_buffer_size = 50_000
  # 'none' streams from the files (ImageNet). 'encoded' keeps the encoded
  # examples in host memory: the stream has random access, so it is one global
  # function of (seed, step) whatever the number of processes. 'decoded' keeps
  # them decoded by `input.pp` (uint8; no decoding per step: several times the
  # examples/s). 'device' keeps the decoded set on every device and makes each
  # batch inside the train step (data/device.py): no host work per step.
  c.input.cache = "none"
  # How much of each device's memory the 'device' cache may take.
  c.input.device_cache_gib = 4.0
  c.input.pp = "decode"  # Deterministic ops applied once, before the views.
  # The random view (crop + flip) and the fixed (deterministic) view.
  c.input.pp_random = "inception_crop(128)|flip_lr"
  c.input.pp_fixed = "resize_small(160)|central_crop(128)"
  c.input.pp_post = "value_range(-1, 1)"  # Applied to every model's image.
  c.input.prefetch = 2  # Batches prefetched to the devices.

  # ---- Models ------------------------------------------------------------
  c.num_classes = 102
  c.student_name = "bit"
  c.student = mlc.ConfigDict(dict(depth=50, width=1.0))
  c.student_res = 128
  c.student_init = mlc.FieldReference(None, field_type=str)
  c.teachers = ("t1",)
  c.t1_name = "bit"
  c.t1 = mlc.ConfigDict(dict(depth=152, width=2.0))
  c.t1_res = 128
  c.t1_init = mlc.FieldReference(None, field_type=str)
  c.compute_dtype = "float32"  # 'bfloat16' on accelerators.
  c.remat_student = False

  # ---- Distillation ------------------------------------------------------
  c.distill = mlc.ConfigDict()
  # 'consistent' (one crop for all models), 'independent' (a crop per model),
  # 'fixed' (teachers see pp_fixed, the student random crops).
  c.distill.views = "consistent"
  c.distill.loss = "kl"  # 'kl' | 'euclidean' | 'logsoftmax_euclidean' | 'hard'.
  c.distill.t = 1.0  # Temperature of 'kl'.
  c.distill.label_weight = 0.0  # Weight of the labelled cross-entropy.
  # The paper's fixed teachers (Section 3.1.1), with views='fixed' and no mixup:
  # the teachers' outputs are computed once per image before training
  # (precompute.py) and looked up at every step. '' (off) | 'rs' (both models
  # see pp_fixed, e.g. the whole image resized) | 'cc' (teachers pp_fixed, e.g.
  # a central crop; the student pp_random) | 'ic_ens' (teachers: the mean
  # probability over `ensemble_crops` pp_random crops; the student pp_random).
  c.distill.fixed = ""
  c.distill.ensemble_crops = 1000  # 'ic_ens': the paper averages 1,000 crops.
  c.mixup = mlc.ConfigDict(dict(p=1.0))  # Beta(p, p); 0 disables mixup.

  # ---- Optimizer ---------------------------------------------------------
  c.optim = mlc.ConfigDict(dict(
      name="adam",  # 'adam' | 'sgd' | 'muon' | 'shampoo'.
      b1=0.9, b2=0.999, eps=1e-8,
      mu_dtype="bfloat16",
      momentum=0.9, nesterov=False,     # sgd.
      muon_beta=0.95, muon_adam_lr_ratio=1.0,   # muon.
      # Muon update RMS (0.2 ~ Adam's, so Adam's lr carries over); None:
      # Keller Jordan's sqrt(max(1, fan_out/fan_in)) scaling (larger lr).
      muon_consistent_rms=0.2,
      shampoo_block_size=128, shampoo_precond_every=10,
      shampoo_start_preconditioning=10, shampoo_eps=1e-6,
      shampoo_b2=0.999,
      # 'adam' grafting keeps Adam's lr scale; the paper's (optim.PAPER_SHAMPOO)
      # is 'sgd' grafting per layer with Nesterov momentum.
      shampoo_graft="adam", shampoo_nesterov=False, shampoo_graft_per_block=False,
  ))
  c.lr = 0.003
  c.wd = 3e-4  # Decoupled, on kernels only, scaled by the schedule.
  c.grad_clip_norm = 1.0
  c.schedule = mlc.ConfigDict(dict(decay_type="cosine", linear_end=0.0))
  _duration(c.schedule, "warmup")

  # ---- Sharding ----------------------------------------------------------
  # -1: all the devices left. fsdp > 1 shards large parameters (teachers).
  c.mesh = mlc.ConfigDict(dict(data=-1, fsdp=1))
  c.fsdp_min_size = 2**18  # Arrays smaller than this are replicated.

  # ---- Logging, checkpoints, evaluation ----------------------------------
  _duration(c, "log_training")
  _duration(c, "ckpt")
  c.keep_ckpts = 3
  # orbax's replica-parallel saving: the replicas of a replicated array each
  # write a slice of it (its default on CPU and TPU). False: one replica writes
  # the whole array, and the first save compiles no slicing programs (~400 at
  # ~25 ms each on CPU for a small ResNet's Adam state; the tests turn it off).
  c.ckpt_replica_parallel = True
  c.allow_config_change = False  # Resume a workdir whose config differs.
  c.profile = mlc.ConfigDict(dict(first_step=-1, num_steps=5))
  c.evals = mlc.ConfigDict()
  return c


def steps(prefix: str, config: mlc.ConfigDict, *, num_examples: int | None,
          batch_size: int, total_steps: int | None = None,
          default: int | None = None) -> int | None:
  """Returns the `prefix` duration of `config` in steps.

  Exactly one of `{prefix}_steps`, `{prefix}_epochs`, `{prefix}_examples` may
  be set. A negative value means "only at the end" (`total_steps`).
  """
  given = {u: config.get(f"{prefix}_{u}") for u in ("steps", "epochs", "examples")}
  # 0 means "not set" as None does: None cannot be typed on a command line.
  given = {u: v for u, v in given.items() if v}
  if len(given) > 1:
    raise errors.ConfigError(
        f"Config sets the duration '{prefix}' twice: "
        + ", ".join(f"{prefix}_{u}={v}" for u, v in given.items())
        + f". Keep one of them (e.g. --config.{prefix}_{next(iter(given))}=0, "
        "which unsets it).")
  if not given:
    return default
  unit, value = next(iter(given.items()))
  if unit == "steps":
    n = int(value)
  elif unit == "examples":
    n = math.ceil(value / batch_size)
  else:
    if not num_examples:
      raise errors.ConfigError(f"{prefix}_epochs needs the number of training examples, "
                       f"which is unknown here; give {prefix}_steps instead.")
    n = math.ceil(value * num_examples / batch_size)
  if n < 0:
    if total_steps is None:
      raise errors.ConfigError(f"{prefix}: a negative duration needs the total.")
    return total_steps
  return n


def default_workdir(config_arg: str) -> str:
  """`workdirs/<config name>[_<config args>]`, a file-system-safe folder name.

  `config_arg` is the `--config` flag's value. The config name is the file's
  path below configs/ without `.py` (configs/teachers/pets.py ->
  teachers/pets), else the file's stem; in the arguments, everything but
  letters, digits, '.' and '-' becomes '_'
  (`flowers_r50.py:variant=fast,runlocal` -> `flowers_r50_variant_fast_runlocal`).
  """
  path, _, args = config_arg.partition(":")
  parts = os.path.normpath(os.path.splitext(path)[0]).split(os.sep)
  below = [i for i, part in enumerate(parts[:-1]) if part == "configs"]
  name = "/".join(parts[below[-1] + 1:]) if below else parts[-1]
  if args:
    name += "_" + re.sub(r"[^A-Za-z0-9.-]+", "_", args).strip("_")
  return os.path.join("workdirs", name)


# ---- The commands' flags -------------------------------------------------------


def _innermost_message(e: BaseException) -> str:
  """ml_collections wraps a KeyError's text in an AttributeError; unwrap it."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
  return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _config_file_error(e: BaseException) -> str | None:
  """The message of a UserError that the config file's get_config() raised.

  config_flags re-raises it with the traceback as its text (and absl wraps
  that in a flags.Error): the original message is the trace's last line.
  """
  while e is not None and not isinstance(e, errors.UserError):
    e = e.__cause__ or e.__context__
  if e is None:
    return None
  last = str(e).strip().splitlines()[-1]
  name = f"{type(e).__module__}.{type(e).__name__}: "
  return last[len(name):] if last.startswith(name) else str(e)


def flags_parser(command: str):
  """absl's flag parsing for `command`, with config mistakes as one line, exit 2.

  Covers an unknown or mistyped `--config.field=` override and an error the
  config file raises for its arguments (`:variant=slow`).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  def parse(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except (flags.Error, errors.UserError) as e:
      message = _config_file_error(e)
      if message is None:
        message = f"{e}\nPass --helpfull to see the flags."
      print(f"{command}: error: {message}", file=sys.stderr)
      sys.exit(2)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      overrides = " ".join(a for a in argv[1:] if a.startswith("--config.")) or "--config"
      what = ("unknown config field" if isinstance(e, (AttributeError, KeyError))
              else "value of the wrong type for a config field")
      print(f"{command}: error: {what} in {overrides}: {_innermost_message(e)} "
            "Fields and their types are in big_distill/config_lib.py (base()) and in the "
            "config file.", file=sys.stderr)
      sys.exit(2)
  return parse
