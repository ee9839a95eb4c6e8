"""The Fashion-MNIST miniature's shared parts: data, evaluators, the student recipe.

configs/fmnist_teacher.py (the teacher), configs/fmnist_distill.py (the
students: `distill()`, whose arms and arguments that file's docstring lists),
configs/fmnist_mobilenet.py and configs/fmnist_other_images.py (built on
`distill()`) read them from here, so that each works from any working
directory.
"""

from __future__ import annotations

import ml_collections as mlc

from big_distill import config_lib
from big_distill import errors

TRAIN_PP = "decode|grayscale_to_rgb|resize(32)"
RANDOM_VIEW = "inception_crop(32, area_min=40)|flip_lr"
EVAL_PP = "decode|grayscale_to_rgb|resize(32)|value_range(-1, 1)"


def data(split: str, data_dir: str | None = None):
  d = config_lib.data_config()
  d.name, d.split, d.data_dir = "fashion_mnist", split, data_dir or None
  return d


def classification_eval(split: str, every_steps: int, data_dir=None, kind="classification"):
  e = config_lib.eval_config()
  e.type = kind
  e.data = data(split, data_dir)
  e.pp = EVAL_PP
  e.batch_size = 500
  e.cache_raw = True
  e.log_steps = every_steps
  return e


# The miniature's splits (docs/results.md): every model trains on TRAIN_SPLIT
# or a subset of it; VAL_SPLIT is the only data any selection looks at; the
# test split is read for the final table.
TRAIN_SPLIT = "train[:50000]"
VAL_SPLIT = "train[50000:]"


def split_arg(arg, own: dict):
  """(the arguments of `own` in `arg`, parsed; the rest of `arg`, for distill())."""
  mine, rest = [], []
  for part in (arg or "").split(","):
    if part.strip():
      (mine if part.partition("=")[0].strip() in own else rest).append(part)
  return config_lib.parse_arg(",".join(mine), **own), ",".join(rest)


# The ViT family in the miniature (docs/results.md, "ViT in the miniature"):
# big_distill/models/vit.py kwargs at 32px. Patch 8 (16 tokens of 8x8
# pixels; the 28px item fills the frame): patch 4's 64 tokens cost ~4x the
# FLOPs, more than this CPU affords for a teacher and a student.
# Parameters for 10 classes (jax.eval_shape) and forward FLOPs per 32px image
# (XLA's cost analysis on this CPU) against the BiT models they stand beside.
# The teacher (configs/fmnist_teacher.py:model=vit): 819,338 parameters, 27.0
# MFLOPs (the BiT R26x0.25 teacher: 882,394 and 6.2).
VIT_TEACHER = dict(variant=None, patch_size=8, width=128, depth=4, mlp_dim=512, num_heads=4,
                   posemb="sincos2d", pool_type="gap")
# The student (configs/fmnist_vit.py:student=vit): 213,066 parameters, 7.2
# MFLOPs (the BiT R26x0.125 student: 223,922 and 1.9).
VIT_STUDENT = dict(variant=None, patch_size=8, width=64, depth=4, mlp_dim=256, num_heads=4,
                   posemb="sincos2d", pool_type="gap")
MODELS = ("bit", "vit")


ARMS = ("funmatch", "consistent", "independent", "fixed", "supervised", "shampoo", "lowres",
        "fix_rs", "fix_ic_ens", "shampoo_paper")
# Images in the student's training set: 10 or 102 per class (a balanced
# subset), or all of train[:50000] (the teacher's own training set; claim 11).
SETTINGS = (100, 1020, 50000)
ALL = 50000
_VIEWS = {"independent": "independent", "fixed": "fixed", "fix_rs": "fixed",
          "fix_ic_ens": "fixed"}
_NO_MIXUP = ("consistent", "independent", "fixed", "fix_rs", "fix_ic_ens")


def distill(arg=None) -> mlc.ConfigDict:
  """configs/fmnist_distill.py's config (its docstring has the arms and arguments)."""
  a = config_lib.parse_arg(
      arg, arm="funmatch", images=100, epochs=300.0, lr=0.0, mixup=-1.0, loss="kl",
      seed=0, crop=5, evals=4, t=1.0, width=0.125, teacher_width=0.25, teacher_depth=26,
      batch=64, wd=1e-4, data_dir="", runlocal=False)
  if a.arm not in ARMS:
    raise errors.ConfigError(f"Unknown arm {a.arm!r} in --config=configs/fmnist_distill.py:arm=...; "
                     f"choose one of {', '.join(ARMS)}.")
  if a.images not in SETTINGS:
    raise errors.ConfigError(f"images={a.images}: the miniature has the settings "
                     f"{' and '.join(map(str, SETTINGS))} (10 and 102 images per class,"
                     f" or all {ALL}).")
  c = config_lib.base()
  c.seed = a.seed
  c.input.data = data(TRAIN_SPLIT, a.data_dir)
  c.input.data.balanced_subset = None if a.images == ALL else a.images
  c.input.cache = "encoded"
  c.input.batch_size = 16 if a.runlocal else a.batch
  c.input.pp = TRAIN_PP
  # The paper's inception crop: area 5%..100%, aspect 3/4..4/3, then a flip.
  c.input.pp_random = f"inception_crop(32, area_min={a.crop})|flip_lr"
  c.input.pp_fixed = "resize(32)"  # The whole image: the fixed teacher's view.
  c.input.pp_post = "value_range(-1, 1)"

  c.num_classes = 10
  c.student_name = "bit"
  c.student = dict(depth=26, width=a.width)
  c.student_init = None  # From scratch.
  c.student_res = 24 if a.arm == "lowres" else 32
  if a.arm == "supervised":
    c.teachers = ()
    c.distill.label_weight = 1.0
  else:
    c.teachers = ("t1",)
    c.t1_name = "bit"
    c.t1 = dict(depth=a.teacher_depth, width=a.teacher_width)
    c.t1_res = 32
    c.t1_init = "workdirs/fmnist/teacher"
  c.distill.views = _VIEWS.get(a.arm, "consistent")
  c.distill.loss = a.loss
  c.distill.t = a.t
  c.mixup.p = a.mixup if a.mixup >= 0 else (0.0 if a.arm in _NO_MIXUP else 1.0)

  # The paper's other fixed teachers, with the teacher's outputs computed once
  # before training (big_distill/precompute.py): `fix/rs` (both models see the
  # whole image, resized) and `fix/ic_ens` (the teacher's probabilities
  # averaged over 1,000 inception crops of each image; the student on random
  # inception crops); and the `fixed` arm's own (fix/cc-like) teacher view.
  if a.arm == "fixed":
    c.distill.fixed = "cc"  # Its teacher view (the whole image) is computed once.
  if a.arm == "fix_rs":
    c.distill.fixed = "rs"
  if a.arm == "fix_ic_ens":
    c.distill.fixed = "ic_ens"
    c.distill.ensemble_crops = 4 if a.runlocal else 1000

  c.optim.name = "shampoo" if a.arm in ("shampoo", "shampoo_paper") else "adam"
  if a.arm == "shampoo_paper":
    # The paper's Shampoo (Appendix D; optim.PAPER_SHAMPOO): blocks of 128,
    # roots every step, Nesterov, SGD grafting (so the lr is on SGD's scale),
    # b1 0.95, b2 0.85, 25 steps before preconditioning. The `shampoo` arm is
    # the earlier setting (Adam grafting, roots every 10 steps).
    from big_distill import optim  # pylint: disable=g-import-not-at-top
    c.optim.update({k: v for k, v in optim.PAPER_SHAMPOO.items()})
  c.lr = a.lr or 0.003
  c.wd = a.wd
  steps = 3 if a.runlocal else max(round(a.images * a.epochs / a.batch), 1)
  c.total_steps = steps
  c.schedule.warmup_steps = min(100, steps // 10)
  c.log_training_steps = max(steps // 50, 1)
  c.ckpt_steps = max(steps // 4, 1)

  # Validation (the only thing selection reads) and the fit to the teacher on
  # the clean training images, `evals` times; test only at the last step.
  every = 3 if a.runlocal else -(-steps // max(a.evals, 1))  # The last one: at the end.
  val = "train[50000:50064]" if a.runlocal else VAL_SPLIT
  test = "test[:64]" if a.runlocal else "test"
  c.evals.val = classification_eval(val, every, a.data_dir)
  c.evals.test = classification_eval(test, -1, a.data_dir)
  c.evals.test_cal = classification_eval(test, -1, a.data_dir, "calibration")
  c.evals.test_cal.models = "student"
  if c.teachers:
    c.evals.test_dist = classification_eval(test, -1, a.data_dir, "distance")
    c.evals.train_dist = classification_eval(TRAIN_SPLIT, every, a.data_dir, "distance")
    # On all 50,000 images: the fit on the 1,020-image subset (an evaluation of
    # 50,000 images `evals` times would cost more than the training).
    c.evals.train_dist.data.balanced_subset = 1020 if a.images == ALL else a.images
  for e in c.evals.values():
    e.batch_size = 16 if a.runlocal else (100 if e.data.balanced_subset else 500)
  return c
