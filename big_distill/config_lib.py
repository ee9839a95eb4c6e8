"""The one place that says which config fields exist, and how durations work.

Every experiment config starts from `base()` and changes what it needs. The
base config is locked before it is handed to a user, so a misspelt key from a
config file or from the shell (`--config.lrr=1`) is an error, and the resolved
config written to the workdir shows every field the run used: there are no
defaults hidden in the trainer.

Each field of `base()` is written with its type and what it means. The fields
that depend on the data set or the models (the class count, the data's names
and splits, the preprocessing, the models, their resolutions and the teachers'
checkpoints: `REQUIRED`, `TEACHER_REQUIRED`, `EVAL_REQUIRED`) have no default:
they are None (a model's arguments: empty) until the config sets them, and
`check_required` names every one left unset in one error. Every command runs
it on the config it parsed (`flags_parser`), before anything is built.

Config files are Python files with `get_config(arg=None)`, loaded by path
(`load_config`, or the commands' `--config=PATH[:ARG]`). What several configs
share lives in the package (`big_distill.configs`), so a config file works
from any working directory.

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

import importlib.util
import ml_collections as mlc
from ml_collections import config_dict

from big_distill import errors


def required(field_type: type) -> mlc.FieldReference:
  """A field without a default: None, of `field_type`, until the config sets it."""
  return config_dict.placeholder(field_type)


def _optional(field_type: type) -> mlc.FieldReference:
  """A field of `field_type` whose default None means something (the field says what)."""
  return config_dict.placeholder(field_type)


# The fields every config sets (check_required): field -> what to set, with an example.
REQUIRED = {
    "num_classes": "the task's number of classes (e.g. 102 for oxford_flowers102)",
    "input.data.name": "the training data's TFDS name (e.g. 'oxford_flowers102')",
    "input.data.split": "the training split (e.g. 'train' or 'train[:90%]')",
    "input.pp_random": "the random view (e.g. 'inception_crop(128)|flip_lr')",
    "input.pp_fixed": "the fixed view (e.g. 'resize_small(160)|central_crop(128)')",
    "input.pp_post": "what every model's image gets last (e.g. 'value_range(-1, 1)' for BiT)",
    "student_name": "the student's model module in big_distill/models (e.g. 'bit')",
    "student": "the student's model arguments (e.g. dict(depth=50, width=1.0))",
    "student_res": "the student's input resolution in pixels (e.g. 128)",
}
# Per teacher T of `config.teachers` ('{t}' is its name, e.g. t1).
TEACHER_REQUIRED = {
    "{t}_name": "teacher {t}'s model module (e.g. 'bit')",
    "{t}": "teacher {t}'s model arguments (e.g. dict(depth=152, width=2.0))",
    "{t}_res": "teacher {t}'s input resolution in pixels (e.g. 128)",
    "{t}_init": "teacher {t}'s checkpoint: a BiT .npz, a gs:// path or a finished run's workdir",
}
# Per evaluator E of `config.evals`.
EVAL_REQUIRED = {
    "data.name": "its data's TFDS name (e.g. 'oxford_flowers102')",
    "data.split": "its split (e.g. 'validation' or 'train[90%:]')",
    "pp": "its preprocessing (e.g. 'decode|resize_small(160)|central_crop(128)|value_range(-1, 1)')",
}


def _unset(value: Any) -> bool:
  return value is None or value == "" or (isinstance(value, mlc.ConfigDict) and not value)


def _get(config: mlc.ConfigDict, path: str) -> Any:
  node = config
  for key in path.split("."):
    if not isinstance(node, mlc.ConfigDict) or key not in node:
      return None
    node = node[key]
  return node


def missing(config: mlc.ConfigDict) -> dict[str, str]:
  """The required fields that `config` leaves unset: field -> what to set there."""
  out = {}
  for path, what in REQUIRED.items():
    if _unset(_get(config, path)):
      out[path] = what
  for t in config.get("teachers") or ():
    for path, what in TEACHER_REQUIRED.items():
      if _unset(_get(config, path.format(t=t))):
        out[path.format(t=t)] = what.format(t=t)
  for name, ec in (config.get("evals") or {}).items():
    for path, what in EVAL_REQUIRED.items():
      if _unset(_get(ec, path)):
        out[f"evals.{name}.{path}"] = f"evaluator {name!r}: {what}"
  return out


def check_required(config: mlc.ConfigDict, where: str = "The config") -> None:
  """Raises one ConfigError naming every required field that `config` leaves unset."""
  unset = missing(config)
  if unset:
    raise errors.ConfigError(
        f"{where} leaves {len(unset)} field(s) without a value, and they have no default: "
        + "; ".join(f"config.{k} ({v})" for k, v in unset.items())
        + ". Set them in the config file (see big_distill/config_lib.py base()), or on "
        "the command line as --config.FIELD=VALUE.")


def unused_teacher_fields(old: dict, new: dict) -> tuple[str, ...]:
  """The top-level fields of teachers that neither config.json dict lists in `teachers`.

  A run without a teacher never reads them, so they differ between runs
  recorded when base() gave t1 Flowers' R152x2 and the same config now (unset).
  """
  listed = set(old.get("teachers") or ()) | set(new.get("teachers") or ())
  names = {k[:-len("_init")] for k in (*old, *new) if k.endswith("_init")} - {"student"}
  return tuple(f"{t}{s}" for t in sorted(names - listed) for s in ("", "_name", "_res", "_init"))


def load_config_module(path: str):
  """The config file at `path` as a module, loaded by its path (not by `sys.path`)."""
  spec = importlib.util.spec_from_file_location(
      "big_distill_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0]),
      path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(config_arg: str, lock: bool = True) -> Any:
  """The config of `PATH[:ARG]`: the file's `get_config(ARG)`, as `--config=` gives it.

  The file is loaded by its path, from any working directory (what configs
  share, they import from `big_distill.configs`). A mistake in ARG is the
  file's `errors.ConfigError`, raised as it is.
  """
  path, colon, arg = config_arg.partition(":")
  if not os.path.isfile(path):
    raise errors.ConfigError(f"--config={config_arg}: no such file {path!r} (relative paths "
                             f"are from {os.getcwd()}).")
  module = load_config_module(path)
  config = module.get_config(arg) if colon else module.get_config()
  if lock and isinstance(config, mlc.ConfigDict):
    config.lock()
  return config


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
  """`{prefix}_steps` (int), `{prefix}_epochs` (float), `{prefix}_examples` (int): set one."""
  for unit in ("steps", "epochs", "examples"):
    c[f"{prefix}_{unit}"] = mlc.FieldReference(None, field_type=float if unit == "epochs" else int)


# In the three functions below, each field is followed by its type and what it
# means; REQUIRED marks a field without a default (see REQUIRED above).


def data_config() -> mlc.ConfigDict:
  """Where examples come from."""
  return mlc.ConfigDict(dict(
      name=required(str),   # str, REQUIRED: TFDS name, e.g. 'oxford_flowers102'.
      split=required(str),  # str, REQUIRED: TFDS split string, e.g. 'train[:90%]'.
      data_dir=_optional(str),  # str | None: local or gs:// folder; None = TFDS default.
      # int | None: a fixed, class-balanced subset: this many examples in total,
      # the first ones of each class in the split's order (the 1,020-image setting).
      balanced_subset=_optional(int),
      # tuple | None: with balanced_subset, take it from these label ids only
      # (e.g. (1, 3, 5)), balanced over them; None = every class.
      classes=_optional(tuple),
  ))


def eval_config() -> mlc.ConfigDict:
  """One evaluator: its own data, preprocessing and period."""
  c = mlc.ConfigDict(dict(
      type="classification",  # str: 'classification' | 'distance' | 'calibration'.
      data=data_config(),     # data_config(): the data it reads (name, split REQUIRED).
      pp=required(str),       # str, REQUIRED: the whole preprocessing, value range included.
      batch_size=_optional(int),  # int | None: None = the training batch size.
      cache_raw=False,        # bool: keep the encoded examples in host memory.
      models="all",           # str: which models to evaluate: 'student', teacher names, 'all'.
      ece_bins=15,            # int: calibration bins ('calibration').
  ))
  _duration(c, "log")  # How often it runs (a negative value: at the end only).
  return c


def base() -> mlc.ConfigDict:
  """Every field a big_distill run reads: its type, what it means, its default or REQUIRED."""
  c = mlc.ConfigDict()
  c.seed = 0  # int: model init, data order, crops and mixup.
  _duration(c, "total")  # The run's length (one of total_steps/_epochs/_examples).

  # ---- Input -------------------------------------------------------------
  c.input = mlc.ConfigDict()
  c.input.data = data_config()  # data_config(): the training data (name, split REQUIRED).
  c.input.batch_size = 512  # int: the global batch size.
  c.input.shuffle_buffer_size = 50_000  # int: examples shuffled together (cache='none').
  # str: 'none' streams from the files (ImageNet). 'encoded' keeps the encoded
  # examples in host memory: the stream has random access, so it is one global
  # function of (seed, step) whatever the number of processes. 'decoded' keeps
  # them decoded by `input.pp` (uint8; no decoding per step: several times the
  # examples/s). 'device' keeps the decoded set on every device and makes each
  # batch inside the train step (data/device.py): no host work per step.
  c.input.cache = "none"
  c.input.device_cache_gib = 4.0  # float: how much of each device's memory 'device' may take.
  # str: deterministic ops applied once, before the views. 'decode' (the image,
  # nothing else) fits every image data set; e.g. 'decode|grayscale_to_rgb'.
  c.input.pp = "decode"
  c.input.pp_random = required(str)  # str, REQUIRED: the random view (crop + flip).
  c.input.pp_fixed = required(str)  # str, REQUIRED: the fixed (deterministic) view.
  c.input.pp_post = required(str)  # str, REQUIRED: applied to every model's image.
  c.input.prefetch = 2  # int: batches prefetched to the devices.

  # ---- Models ------------------------------------------------------------
  c.num_classes = required(int)  # int, REQUIRED: the task's classes (every model's head).
  c.student_name = required(str)  # str, REQUIRED: module in big_distill/models ('bit', ...).
  c.student = mlc.ConfigDict()  # dict, REQUIRED: the student's model arguments.
  c.student_res = required(int)  # int, REQUIRED: the student's input resolution.
  c.student_init = _optional(str)  # str | None: its initial weights; None = from scratch.
  # tuple[str]: the teachers' names; () = a supervised run (a teacher's
  # fine-tuning). Each name T has the fields T_name, T, T_res and T_init, all
  # REQUIRED when T is listed (t1's are below; add t2_... for a second one).
  c.teachers = ("t1",)
  c.t1_name = required(str)  # str, REQUIRED with t1: its model module.
  c.t1 = mlc.ConfigDict()  # dict, REQUIRED with t1: its model arguments.
  c.t1_res = required(int)  # int, REQUIRED with t1: its input resolution.
  c.t1_init = required(str)  # str, REQUIRED with t1: its checkpoint (.npz, gs://, a workdir).
  c.compute_dtype = "float32"  # str: activations' dtype; 'bfloat16' on accelerators.
  c.remat_student = False  # bool: recompute the student's activations in the backward pass.

  # ---- Distillation ------------------------------------------------------
  c.distill = mlc.ConfigDict()
  # str: 'consistent' (one crop for all models), 'independent' (a crop per
  # model), 'fixed' (teachers see pp_fixed, the student random crops).
  c.distill.views = "consistent"
  c.distill.loss = "kl"  # str: 'kl' | 'euclidean' | 'logsoftmax_euclidean' | 'hard'.
  c.distill.t = 1.0  # float: temperature of 'kl'.
  c.distill.label_weight = 0.0  # float: weight of the labelled cross-entropy.
  # str: the paper's fixed teachers (Section 3.1.1), with views='fixed' and no
  # mixup: the teachers' outputs are computed once per image before training
  # (precompute.py) and looked up at every step. '' (off) | 'rs' (both models
  # see pp_fixed, e.g. the whole image resized) | 'cc' (teachers pp_fixed, e.g.
  # a central crop; the student pp_random) | 'ic_ens' (teachers: the mean
  # probability over `ensemble_crops` pp_random crops; the student pp_random).
  c.distill.fixed = ""
  c.distill.ensemble_crops = 1000  # int: 'ic_ens' crops; the paper averages 1,000.
  c.mixup = mlc.ConfigDict(dict(p=1.0))  # float p: mixup's Beta(p, p); 0 disables it.

  # ---- Optimizer ---------------------------------------------------------
  c.optim = mlc.ConfigDict(dict(
      name="adam",  # str: 'adam' | 'sgd' | 'muon' | 'shampoo'.
      b1=0.9, b2=0.999, eps=1e-8,  # float: adam's (and grafting's) moments.
      mu_dtype="bfloat16",  # str: dtype of adam's first moment.
      momentum=0.9, nesterov=False,     # float, bool: sgd.
      muon_beta=0.95, muon_adam_lr_ratio=1.0,   # float: muon.
      # float | None: Muon update RMS (0.2 ~ Adam's, so Adam's lr carries over);
      # None: Keller Jordan's sqrt(max(1, fan_out/fan_in)) scaling (larger lr).
      muon_consistent_rms=0.2,
      # int, int, int, float, float: shampoo's blocks, root period, start, eps, b2.
      shampoo_block_size=128, shampoo_precond_every=10,
      shampoo_start_preconditioning=10, shampoo_eps=1e-6,
      shampoo_b2=0.999,
      # str, bool, bool: 'adam' grafting keeps Adam's lr scale; the paper's
      # (optim.PAPER_SHAMPOO) is 'sgd' grafting per layer with Nesterov momentum.
      shampoo_graft="adam", shampoo_nesterov=False, shampoo_graft_per_block=False,
  ))
  c.lr = 0.003  # float: peak learning rate.
  c.wd = 3e-4  # float: decoupled weight decay, on kernels only, scaled by the schedule.
  c.grad_clip_norm = 1.0  # float: global gradient norm clipping.
  # str, float: 'cosine' | 'linear' | 'constant' | 'quadratic' after warm-up; linear's end.
  c.schedule = mlc.ConfigDict(dict(decay_type="cosine", linear_end=0.0))
  _duration(c.schedule, "warmup")  # The warm-up's length.

  # ---- Sharding ----------------------------------------------------------
  # int, int: device mesh axes; -1 = all the devices left. fsdp > 1 shards
  # large parameters (teachers).
  c.mesh = mlc.ConfigDict(dict(data=-1, fsdp=1))
  c.fsdp_min_size = 2**18  # int: arrays smaller than this are replicated.

  # ---- Logging, checkpoints, evaluation ----------------------------------
  _duration(c, "log_training")  # How often training metrics are logged.
  _duration(c, "ckpt")  # How often a checkpoint is saved.
  c.keep_ckpts = 3  # int: checkpoints kept.
  # bool: orbax's replica-parallel saving: the replicas of a replicated array
  # each write a slice of it (its default on CPU and TPU). False: one replica
  # writes the whole array, and the first save compiles no slicing programs
  # (~400 at ~25 ms each on CPU for a small ResNet's Adam state; the tests
  # turn it off).
  c.ckpt_replica_parallel = True
  c.allow_config_change = False  # bool: resume a workdir whose config differs.
  # int, int: profile this many steps from first_step (-1: no profile).
  c.profile = mlc.ConfigDict(dict(first_step=-1, num_steps=5))
  c.evals = mlc.ConfigDict()  # name -> eval_config(): the evaluators.
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


def _raised_user_error(e: BaseException) -> errors.UserError | None:
  """The UserError that the config file's get_config() raised, found by its type.

  A UserError that is no ValueError (a DataError) reaches us as it was raised.
  A ConfigError (a ValueError) does not: ml_collections' config_flags (1.1.0)
  re-raises it as a new exception of the same type whose text is the
  traceback, from inside its `except` (absl then wraps that in a flags.Error),
  so the one raised first is the innermost UserError of the exception chain.
  tests/test_config_lib.py fails if that changes.
  """
  found, seen = None, set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, errors.UserError):
      found = e
    e = e.__cause__ or e.__context__
  return found


def flags_parser(command: str):
  """absl's flag parsing for `command`, with config mistakes as one line, exit 2.

  Covers an unknown or mistyped `--config.field=` override, an error the
  config file raises for its arguments (`:variant=slow`), and required fields
  that the config leaves unset (`check_required`), so that every command
  reports them before it builds anything.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  def fail(message: str):
    print(f"{command}: error: {message}", file=sys.stderr)
    sys.exit(2)

  def parse(argv: list[str]) -> list[str]:
    try:
      rest = flags.FLAGS(argv)
    except (flags.Error, errors.UserError) as e:
      raised = _raised_user_error(e)
      fail(str(raised) if raised is not None else f"{e}\nPass --helpfull to see the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      overrides = " ".join(a for a in argv[1:] if a.startswith("--config.")) or "--config"
      what = ("unknown config field" if isinstance(e, (AttributeError, KeyError))
              else "value of the wrong type for a config field")
      print(f"{command}: error: {what} in {overrides}: {_innermost_message(e)} "
            "Fields and their types are in big_distill/config_lib.py (base()) and in the "
            "config file.", file=sys.stderr)
      sys.exit(2)
    config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
    if isinstance(config, mlc.ConfigDict):  # Not a config file that failed to load.
      try:
        path = config_flags.get_config_filename(flags.FLAGS["config"])
        check_required(config, f"--config={path}")
      except errors.ConfigError as e:
        fail(str(e))
    return rest
  return parse
