"""What the paper configs share: data sets, the recipe, evaluators, `runlocal`.

The configs in configs/ (distillation) and configs/teachers/ (the teachers'
fine-tuning) are thin `get_config(arg)` functions over these helpers; each
keeps its own module docstring (command, run time, expected accuracy) and,
for the distillation configs, its row of the paper's table of released
settings. Run them from the repository root (`python -m big_distill.train`
puts the current folder on the path, so `configs.common` imports).

The pipeline, per data set NAME:

  1. configs/teachers/NAME.py fine-tunes BiT-M R152x2 (the public
     `BiT-M-R152x2.npz`) with BiT-HyperRule, into the workdir
     `workdirs/teachers/NAME_r152x2`; the run's `student.npz` is the teacher.
  2. configs/NAME_r50.py distills it into a BiT R50x1 trained from scratch,
     reading `config.t1_init = 'workdirs/teachers/NAME_r152x2/student.npz'`.

The commands in the docstrings pass absolute workdirs (`$PWD/workdirs/...`):
the checkpointer (orbax) refuses relative ones.

`:runlocal` shrinks models (BiT R26 at widths 1/8 and 1/4), batch (16),
resolutions (1/4), the run (3 steps) and the evaluations (one of each type, on
16 validation examples), so that a config runs end-to-end on a laptop CPU in
about a minute. Its teacher path is
`workdirs/teachers/NAME_local/student.npz`, which the teacher config with
`:runlocal` writes, so the same two commands work at that size."""

from __future__ import annotations

import ml_collections as mlc

from big_distill import config_lib
from big_distill import errors

# ---- Data sets ---------------------------------------------------------------
# `train`: the training split; `train_size`: its size in TFDS, which sets the
# teacher's BiT-HyperRule schedule; `evals`: eval name -> split (`train`: a
# fixed part of the training split, to see how well the student fits it);
# `crop_fraction`: evaluation crop / short side; `cache_raw`: keep the encoded
# training images in host memory (the stream is then one global sequence).
DATASETS = dict(
    flowers=dict(tfds="oxford_flowers102", num_classes=102, train="train", train_size=1020,
                 evals=dict(train="train", val="validation", test="test"),
                 crop_fraction=0.8, cache_raw=True),
    # Pets has no validation split: the last 10% of train is held out.
    pets=dict(tfds="oxford_iiit_pet", num_classes=37, train="train[:90%]", train_size=3312,
              evals=dict(train="train[:90%]", val="train[90%:]", test="test"),
              crop_fraction=0.8, cache_raw=True),
    # TFDS food101 'validation' is Food-101's official test set (250 images a
    # class); the last 10% of train is held out for choosing settings, as in
    # the paper's release ("best settings were selected on a 10% minival").
    # Cached, the encoded training images take about 5 GB of host memory.
    food101=dict(tfds="food101", num_classes=101, train="train[:90%]", train_size=68175,
                 evals=dict(train="train[:4096]", val="train[90%:]", test="validation"),
                 crop_fraction=0.8, cache_raw=True),
    # sun397 (its default TFDS config, 'tfds'): TFDS's train/validation/test.
    sun397=dict(tfds="sun397", num_classes=397, train="train", train_size=76128,
                evals=dict(train="train[:4096]", val="validation", test="test"),
                crop_fraction=0.8, cache_raw=True),
    # ImageNet's labelled test set is its validation split (what papers report).
    imagenet=dict(tfds="imagenet2012", num_classes=1000, train="train", train_size=1281167,
                  evals=dict(train="train[:10000]", val="validation"),
                  crop_fraction=0.875, cache_raw=False),
)

# The BiT family: the paper's teacher and student, and runlocal's stand-ins.
R152X2 = dict(depth=152, width=2.0)
R50X1 = dict(depth=50, width=1.0)
LOCAL_TEACHER = dict(depth=26, width=0.25)
LOCAL_STUDENT = dict(depth=26, width=0.125)
LOCAL_BATCH = 16
LOCAL_STEPS = 3
LOCAL_EVAL_EXAMPLES = 16

# Student and teacher accuracy, their distances, and calibration: eval-name
# prefix -> (eval type, splits). Metrics: `val/student_top1`, `val/t1_top1`,
# `dist_val/t1_kl`, `dist_val/t1_agree_top1`, `calib_val/student_ece`, ...
DISTILL_EVALS = {
    "": ("classification", "train", "val", "test"),
    "dist_": ("distance", "train", "val", "test"),
    "calib_": ("calibration", "val", "test"),
}


def res(pixels: int, runlocal: bool) -> int:
  """A model's resolution; runlocal divides every resolution by 4."""
  return pixels // 4 if runlocal else pixels


def short_side(dataset: str, crop: int) -> int:
  """The image size that a `crop` is cut from (160 for 128 on small data)."""
  return round(crop / DATASETS[dataset]["crop_fraction"])


def eval_view(dataset: str, crop: int) -> str:
  """The deterministic view: resize the short side, then a central crop."""
  return f"resize_small({short_side(dataset, crop)})|central_crop({crop})"


def eval_pp(dataset: str, crop: int) -> str:
  """The evaluation pp: decode, the deterministic view, values in [-1, 1]."""
  return f"decode|{eval_view(dataset, crop)}|value_range(-1, 1)"


def teacher_workdir(dataset: str, runlocal: bool, suffix: str = "") -> str:
  """Where a configs/teachers/ run writes, and distillation reads, a teacher."""
  return f"workdirs/teachers/{dataset}_{'local' if runlocal else 'r152x2'}{suffix}"


def _data(dataset: str, split: str) -> mlc.ConfigDict:
  d = config_lib.data_config()
  d.name, d.split = DATASETS[dataset]["tfds"], split
  return d


def base(dataset: str, *, runlocal: bool, batch_size: int) -> mlc.ConfigDict:
  """`config_lib.base()` with the data set, the batch and the compute dtype."""
  c = config_lib.base()
  c.input.data = _data(dataset, DATASETS[dataset]["train"])
  c.input.cache_raw = DATASETS[dataset]["cache_raw"]
  c.input.batch_size = LOCAL_BATCH if runlocal else batch_size
  if runlocal:
    c.input.shuffle_buffer_size = LOCAL_BATCH
  c.num_classes = DATASETS[dataset]["num_classes"]
  # bfloat16 activations on accelerators (parameters and logits stay float32);
  # float32 on a laptop CPU.
  c.compute_dtype = "float32" if runlocal else "bfloat16"
  return c


def set_durations(c: mlc.ConfigDict, *, runlocal: bool, warmup_steps: int,
                  log_training_steps: int, ckpt_steps: int,
                  total_epochs: float | None = None, total_steps: int | None = None) -> None:
  """The run's length, warm-up, and logging and checkpoint periods."""
  if runlocal:
    c.total_steps, c.schedule.warmup_steps = LOCAL_STEPS, 1
    c.log_training_steps, c.ckpt_steps = 1, LOCAL_STEPS
  else:
    c.total_epochs, c.total_steps = total_epochs, total_steps
    c.schedule.warmup_steps = warmup_steps
    c.log_training_steps, c.ckpt_steps = log_training_steps, ckpt_steps


def add_evals(c: mlc.ConfigDict, dataset: str, *, pp: str, runlocal: bool,
              cache_raw: bool, types: dict[str, tuple[str, ...]],
              log_epochs: float | None = None, log_steps: int | None = None) -> None:
  """Adds the evaluator `{prefix}{split name}` for each prefix in `types`.

  `types`: prefix -> (eval type, *split names of DATASETS[dataset]["evals"]).
  Teachers are frozen, so evaluate.py computes their accuracy once and repeats
  it. runlocal keeps one evaluator of each type, on the first 16 examples of
  the val split, run at the end: on a CPU, compiling and starting evaluators
  takes most of the time, and the other splits would only repeat them.
  """
  splits = DATASETS[dataset]["evals"]
  for prefix, (kind, *names) in types.items():
    for name in (["val"] if runlocal else names):
      split = splits[name]
      if runlocal:
        split = f"{split.partition('[')[0]}[:{LOCAL_EVAL_EXAMPLES}]"
      ec = config_lib.eval_config()
      ec.type = kind
      ec.data = _data(dataset, split)
      ec.pp = pp
      ec.cache_raw = cache_raw and not runlocal
      if runlocal:
        ec.log_steps = LOCAL_STEPS
      else:
        ec.log_epochs, ec.log_steps = log_epochs, log_steps
      c.evals[prefix + name] = ec


def function_matching(c: mlc.ConfigDict, *, lr: float, wd: float, t: float) -> None:
  """The paper's distillation recipe, on top of a config with its models.

  One shared inception crop for every model (consistent views) and mixup of
  it on the device, so student and teachers always see the same image; KL at
  temperature t, labels unused; Adam (bfloat16 first moment), clipping at
  1.0, cosine decay, decoupled weight decay on kernels.
  """
  c.distill.views = "consistent"
  c.mixup.p = 1.0
  c.distill.loss = "kl"
  c.distill.t = t
  c.distill.label_weight = 0.0  # Labels are only logged (train/label_loss).
  c.student_init = None  # From scratch: patience beats a pretrained start.
  c.optim.name = "adam"
  c.optim.mu_dtype = "bfloat16"
  c.lr, c.wd = lr, wd
  c.grad_clip_norm = 1.0
  c.schedule.decay_type = "cosine"


# ---- Distillation on the small data sets ------------------------------------

def distill_small(dataset: str, variants: dict[str, dict], arg: str | None,
                  fixed: dict[str, dict] | None = None) -> mlc.ConfigDict:
  """Function matching of a 128px R152x2 teacher into a 128px R50x1.

  `variants`: variant -> dict(epochs, lr, wd, t), the config's row of the
  paper's released settings. `arg`: `variant=fast|medium|long`, `runlocal`,
  and `fixed=rs|cc|ic_ens`: the config's fixed-teacher baseline of that name
  instead of function matching (`fixed`: name -> its settings, see
  `fixed_teacher`).
  """
  arg = config_lib.parse_arg(arg, variant="fast", runlocal=False, fixed="")
  if arg.variant not in variants:
    raise ValueError(f"Unknown variant={arg.variant!r} for {dataset}; known: "
                     f"{', '.join(variants)}.")
  v = variants[arg.variant]
  local = arg.runlocal
  c = base(dataset, runlocal=local, batch_size=512)
  r = res(128, local)
  c.input.pp = "decode"
  c.input.pp_random = f"inception_crop({r})|flip_lr"
  c.input.pp_fixed = eval_view(dataset, r)
  c.input.pp_post = "value_range(-1, 1)"

  c.student_name, c.t1_name = "bit", "bit"
  c.student = LOCAL_STUDENT if local else R50X1
  c.student_res = r
  c.teachers = ("t1",)
  c.t1 = LOCAL_TEACHER if local else R152X2
  c.t1_res = r
  c.t1_init = f"{teacher_workdir(dataset, local)}/student.npz"

  function_matching(c, lr=v["lr"], wd=v["wd"], t=v["t"])
  set_durations(c, runlocal=local, total_epochs=v["epochs"], warmup_steps=1500,
                log_training_steps=100, ckpt_steps=1000)
  # 20 points per curve whatever the schedule; small eval sets stay in memory.
  add_evals(c, dataset, pp=eval_pp(dataset, r), runlocal=local,
            cache_raw=DATASETS[dataset]["train_size"] < 20_000,
            log_epochs=v["epochs"] / 20, types=DISTILL_EVALS)
  if arg.fixed:
    fixed_teacher(c, arg.fixed, fixed or {}, dataset=dataset, runlocal=local)
  return c


def fixed_teacher(c: mlc.ConfigDict, kind: str, settings: dict[str, dict], *, dataset: str,
                  runlocal: bool) -> None:
  """The fixed-teacher baseline `kind` (the paper's Section 3.1.1) on config `c`.

  `settings[kind]`: the config's pp strings for it (`{r}`: the crop size,
  `{s}`: the short side it is cut from) and any `distill` fields. The
  teacher's outputs depend on the image alone, so they are computed once
  before training (big_distill/precompute.py); mixup is off (a stored target
  cannot follow a mixed image); the rest is function matching's recipe.
  runlocal averages 4 crops for ic_ens instead of 1,000.
  """
  if kind not in settings:
    raise errors.ConfigError(f"Unknown fixed={kind!r}; known: {', '.join(settings)}.")
  r = c.student_res
  fields = dict(settings[kind])
  for name in ("pp_fixed", "pp_random"):
    if name in fields:
      c.input[name] = fields.pop(name).format(r=r, s=short_side(dataset, r))
  c.distill.views = "fixed"
  c.distill.fixed = kind
  c.mixup.p = 0.0
  c.distill.update(fields)
  if runlocal and kind == "ic_ens":
    c.distill.ensemble_crops = 4


# ---- Teachers: BiT-HyperRule fine-tuning of BiT-M R152x2 --------------------

def hyperrule(train_size: int) -> tuple[int, int, float]:
  """BiT-HyperRule's (steps, warm-up steps, mixup) for a data set's size."""
  if train_size < 20_000:
    return 500, 100, 0.0
  if train_size < 500_000:
    return 10_000, 500, 0.1
  return 20_000, 500, 0.1


def finetune_teacher(dataset: str, arg: str | None, *, resolutions: tuple[int, ...],
                     inception_crop_at: tuple[int, ...] = ()) -> mlc.ConfigDict:
  """Supervised fine-tuning of BiT-M R152x2 on `dataset` (BiT-HyperRule).

  SGD with momentum 0.9, lr 0.003 * batch / 512, batch 512, no weight decay,
  steps / warm-up / mixup by the data set's size; the head starts at zeros
  (BiT-M has 21,843 classes: bit.load re-initializes a head of another size).
  Training crop: resize to the evaluation short side and a random crop (the
  "rc" of the paper's released teachers), or an inception crop where the
  resolution is in `inception_crop_at` (its ImageNet 224px teacher, "ic224").
  `arg`: `res=` one of `resolutions` (the first is the default), `runlocal`.
  """
  arg = config_lib.parse_arg(arg, res=resolutions[0], runlocal=False)
  if arg.res not in resolutions:
    raise ValueError(f"res={arg.res}: the {dataset} teachers are fine-tuned at "
                     f"{', '.join(map(str, resolutions))}.")
  local = arg.runlocal
  c = base(dataset, runlocal=local, batch_size=512)
  if not c.input.cache_raw and not local:
    c.input.shuffle_buffer_size = 250_000
  r = res(arg.res, local)
  view = eval_view(dataset, r)
  if arg.res in inception_crop_at:
    c.input.pp = ""  # The crop decodes only its window of the JPEG.
    c.input.pp_random = f"decode_jpeg_and_inception_crop({r})|flip_lr"
    c.input.pp_fixed = f"decode|{view}"
  else:
    c.input.pp = f"decode|resize({short_side(dataset, r)})"
    c.input.pp_random = f"random_crop({r})|flip_lr"
    c.input.pp_fixed = view
  c.input.pp_post = "value_range(-1, 1)"

  c.teachers = ()  # Supervised: the loss is the labelled cross-entropy.
  c.student_name = "bit"
  c.student = LOCAL_TEACHER if local else R152X2
  c.student_res = r
  # The public BiT-M checkpoint (https://storage.googleapis.com/bit_models/
  # BiT-M-R152x2.npz; gs:// paths work too). runlocal starts from scratch, as
  # there is no tiny BiT-M.
  c.student_init = None if local else "BiT-M-R152x2.npz"

  steps, warmup, mixup = hyperrule(DATASETS[dataset]["train_size"])
  c.mixup.p = mixup
  c.optim.name = "sgd"
  c.optim.momentum, c.optim.nesterov = 0.9, False
  c.optim.mu_dtype = "float32"
  c.lr = 0.003 * c.input.batch_size / 512
  c.wd = 0.0
  c.grad_clip_norm = None
  # BiT-HyperRule divides the lr by 10 at 30%, 60% and 90% of the steps; the
  # trainer has no step schedule, so a linear decay to 0 stands in for it.
  c.schedule.decay_type = "linear"
  c.schedule.linear_end = 0.0
  set_durations(c, runlocal=local, total_steps=steps, warmup_steps=warmup,
                log_training_steps=10 if steps <= 1000 else 50,
                ckpt_steps=min(1000, steps))
  add_evals(c, dataset, pp=eval_pp(dataset, r), runlocal=local, cache_raw=False,
            log_steps=steps // 10,
            types={"": ("classification", *DATASETS[dataset]["evals"]),
                   "calib_": ("calibration", "val")})
  return c
