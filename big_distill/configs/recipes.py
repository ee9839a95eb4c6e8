"""The paper's recipes, each written once; the config files give their settings.

`small_data_distill`: function matching from a BiT-M R152x2 teacher into a
BiT R50x1 (or MobileNet v3) student on a small data set (configs/flowers_r50.py,
pets_r50.py, food101_r50.py, sun397_r50.py). `bit_hyperrule_teacher`: the
teacher's BiT-HyperRule fine-tuning on the same data sets
(configs/teachers/NAME.py, and through `bit_hyperrule_finetune` the ImageNet
and custom teachers). The smaller pieces (`shared_inception_crop`,
`student_and_teacher`, `function_matching`, `add_distill_evals`, and
ImageNet's input, crop and teachers) are what configs/custom_r50.py and the
ImageNet configs share with them. Each config file keeps its data set's
settings (the released table), its commands and expected accuracy, and calls
these with them.
"""

from __future__ import annotations

import ml_collections as mlc

from big_distill import config_lib
from big_distill import errors
from big_distill.configs import common


# ---- Function matching (the paper's Section 3) --------------------------------


def shared_inception_crop(c: mlc.ConfigDict, r: int) -> str:
  """One inception crop (5-100% of the area, aspect 3/4-4/3) and a flip at `r`
  px, shared by every model; the fixed view resizes the short side to 5/4 of
  `r` and takes the central crop. Returns the evaluators' pp string (the same
  central crop)."""
  c.input.pp = "decode"
  c.input.pp_random = f"inception_crop({r})|flip_lr"
  c.input.pp_fixed = f"resize_small({r * 5 // 4})|central_crop({r})"
  c.input.pp_post = "value_range(-1, 1)"
  return f"decode|resize_small({r * 5 // 4})|central_crop({r})|value_range(-1, 1)"


def student_and_teacher(c: mlc.ConfigDict, student: str, *, res: int, teacher: dict,
                        teacher_res: int, teacher_init: str) -> None:
  """The `:student=` model (common.STUDENTS) from scratch at `res`, and one BiT
  teacher `t1` (Model kwargs `teacher`) at `teacher_res` from `teacher_init`;
  bfloat16 activations (parameters and logits stay float32)."""
  c.student_name = student
  c.student = common.student(student)
  c.student_res = res
  c.student_init = None
  c.teachers = ("t1",)
  c.t1_name = "bit"
  c.t1 = teacher
  c.t1_res = teacher_res
  c.t1_init = teacher_init
  c.compute_dtype = "bfloat16"


def function_matching(c: mlc.ConfigDict, *, t: float, lr: float, wd: float,
                      warmup_steps: int, epochs: float, log_training_steps: int) -> None:
  """Function matching's loss, optimizer and schedule.

  The same mixed image for student and teacher (consistent views, then mixup
  on the device), KL at temperature `t`, labels unused (train/label_loss is
  only logged). Adam with a bfloat16 first moment, clipping at 1.0, decoupled
  weight decay `wd` on kernels, `warmup_steps` of warm-up to `lr` then cosine
  decay over `epochs`; a checkpoint every 1,000 steps.
  """
  c.distill.views = "consistent"
  c.mixup.p = 1.0
  c.distill.loss = "kl"
  c.distill.t = t
  c.distill.label_weight = 0.0
  c.optim.name = "adam"
  c.optim.mu_dtype = "bfloat16"
  c.lr, c.wd = lr, wd
  c.grad_clip_norm = 1.0
  c.schedule.decay_type = "cosine"
  c.schedule.warmup_steps = warmup_steps
  c.total_epochs = epochs
  c.log_training_steps, c.ckpt_steps = log_training_steps, 1000


def add_distill_evals(c: mlc.ConfigDict, dataset: str, splits: tuple[str, ...],
                      calib_splits: tuple[str, ...], **kwargs) -> None:
  """Student and teacher accuracy and their distances on `splits`, calibration
  on `calib_splits` of `dataset` (`val/student_top1`, `dist_val/t1_agree_top1`,
  `calib_val/student_ece`, ...); `kwargs`: common.add_eval's."""
  for prefix, kind, names in (("", "classification", splits), ("dist_", "distance", splits),
                              ("calib_", "calibration", calib_splits)):
    for split in names:
      common.add_eval(c, prefix + split, kind, dataset, split, **kwargs)


def small_data_distill(dataset: str, arg: mlc.ConfigDict, *, variants: dict,
                       cache: str, eval_cache_raw: bool, teacher: str,
                       other_images: tuple[str, ...] = ()) -> mlc.ConfigDict:
  """The small-data function-matching recipe on `dataset` (common.DATASETS).

  `arg`: the parsed `variant`, `runlocal`, `student` and `fixed` (and
  `images` where `other_images` names the data sets whose images it may
  distil on, paper Section 3.8). `variants`: variant -> (epochs, lr, wd,
  temperature), the released settings. `cache`: how the training images are
  kept in host memory; `eval_cache_raw`: whether the evaluators keep theirs.
  `teacher`: the released teacher's file (runlocal reads the tiny one that
  configs/teachers/DATASET.py:runlocal trains).
  """
  if arg.variant not in variants:
    raise errors.ConfigError(f"Unknown variant={arg.variant!r} for {dataset}; known: "
                             f"{', '.join(variants)}.")
  epochs, lr, wd, t = variants[arg.variant]
  local = arg.runlocal
  c = config_lib.base()

  # ---- Data: the training split (common.DATASETS) kept in host memory;
  # "decoded" keeps pixels (no JPEG decoding per step), "encoded" the JPEGs.
  # Random access: one global stream of (seed, step) for any process count.
  c.input.data = common.data(dataset)
  c.input.cache = cache
  c.input.batch_size = 512
  c.num_classes = common.DATASETS[dataset]["num_classes"]

  # ---- Preprocessing: one inception crop (5-100% of the area, aspect 3/4-4/3)
  # and a flip, shared by every model; evaluation resizes the short side to
  # 160 and takes the central 128x128.
  r = common.res(128, local)
  pp_eval = shared_inception_crop(c, r)

  # ---- Models: a BiT R50x1 student from scratch (patience beats a pretrained
  # start), a BiT-M R152x2 teacher fine-tuned at 128px.
  # `:student=mobilenet_v3`: MobileNet v3 Large with GroupNorm (Section 3.6).
  # The paper's released teacher; big_vision's bit_paper pads the stem's
  # max-pool with -inf. runlocal's teacher is the tiny one that
  # configs/teachers/DATASET.py:runlocal trains (BiT's zero padding).
  student_and_teacher(
      c, arg.student, res=r, teacher=dict(depth=152, width=2.0, stem_pool_pad="neg_inf"),
      teacher_res=r,
      teacher_init=f"workdirs/teachers/{dataset}_local/student.npz" if local else teacher)

  function_matching(c, t=t, lr=lr, wd=wd, warmup_steps=1500, epochs=epochs,
                    log_training_steps=100)

  # ---- Evaluators: student and teacher accuracy, their distances and
  # calibration (`val/student_top1`, `dist_test/t1_agree_top1`,
  # `calib_test/student_ece`, ...), 20 points per curve. The teacher's own
  # metrics are computed once (it is frozen) and repeated.
  # `:images=`: distil on another data set's images (Section 3.8); periods in
  # steps of the in-domain schedule.
  steps = round(epochs * common.DATASETS[dataset]["train_size"] / c.input.batch_size)
  own_images = not other_images or common.source_dataset(arg.images) == dataset
  period = (dict(log_epochs=epochs / 20, cache_raw=eval_cache_raw) if own_images
            else dict(log_steps=max(steps // 20, 1), cache_raw=eval_cache_raw))
  add_distill_evals(c, dataset, ("train", "val", "test"), ("val", "test"), pp=pp_eval,
                    **period)

  if not own_images:
    common.set_image_source(c, arg.images, other_images, steps)
  # `:fixed=rs|cc|ic_ens`: the paper's fixed-teacher baselines instead
  # (common.FIXED: each one's views; the teacher's outputs computed once).
  if arg.fixed:
    common.fixed_teacher(c, arg.fixed, short_side=r * 5 // 4, runlocal=local)
  if local:
    common.shrink_for_local(c)
  return c


# ---- Teachers: BiT-M R152x2 fine-tuned with BiT-HyperRule ----------------------

BIT_M = dict(depth=152, width=2.0)
# BiT-HyperRule's learning rate at batch 512 (it scales with the batch).
HYPERRULE_LR = 0.003


def bit_hyperrule_finetune(c: mlc.ConfigDict, *, res: int, init: str, steps: int,
                           warmup: int, mixup: float) -> None:
  """The model and optimizer of a teacher's fine-tuning (Kolesnikov et al. 2020).

  BiT-M R152x2 trained with labels (no teachers: the labelled cross-entropy
  is the loss) from `init` (the public BiT-M checkpoint; bit.load replaces
  its 21,843-class head by a zero head) at `res`. SGD with momentum 0.9, lr
  0.003 at batch 512, no weight decay, `steps` steps, `warmup` of warm-up,
  mixup `mixup` (BiT-HyperRule by training-set size). BiT divides the lr by 10
  at 30%, 60% and 90% of the steps; the trainer has no step schedule, so a
  linear decay to 0 stands in for it.
  """
  c.teachers = ()
  c.student_name = "bit"
  c.student = dict(BIT_M)
  c.student_res = res
  c.student_init = init
  c.compute_dtype = "bfloat16"
  c.mixup.p = mixup
  c.optim.name = "sgd"
  c.optim.momentum, c.optim.nesterov = 0.9, False
  c.optim.mu_dtype = "float32"
  c.lr = HYPERRULE_LR
  c.wd = 0.0
  c.grad_clip_norm = None
  c.schedule.decay_type = "linear"
  c.schedule.linear_end = 0.0
  c.schedule.warmup_steps = warmup
  c.total_steps = steps


def shrink_teacher_for_local(c: mlc.ConfigDict) -> None:
  """common.shrink_for_local, then BiT-HyperRule's lr for the smaller batch."""
  common.shrink_for_local(c)
  c.lr = HYPERRULE_LR * c.input.batch_size / 512


# BiT-HyperRule's schedule by training-set size (Kolesnikov et al. 2020, sec.
# 3.3): (fewer images than this, steps, warm-up steps, mixup alpha).
HYPERRULE_SCHEDULES = ((20_000, 500, 100, 0.0), (500_000, 10_000, 500, 0.1),
                       (float("inf"), 20_000, 500, 0.1))


def hyperrule_schedule(train_images: int) -> dict:
  """{steps, warmup, mixup} of BiT-HyperRule for a training set of this size."""
  for below, steps, warmup, mixup in HYPERRULE_SCHEDULES:
    if train_images < below:
      return dict(steps=steps, warmup=warmup, mixup=mixup)
  raise AssertionError(train_images)


def small_data_teacher(dataset: str, arg: mlc.ConfigDict, *, log_training_steps: int,
                       ckpt_steps: int, log_steps: int) -> mlc.ConfigDict:
  """A small-data set's 128px teacher (configs/teachers/DATASET.py).

  `arg`: the parsed `res` (128 only) and `runlocal`. The schedule is
  BiT-HyperRule's for the data set's training size (`hyperrule_schedule` of
  common.DATASETS' `train_size`); `log_training_steps`, `ckpt_steps`,
  `log_steps` (the evaluators'): how often the run reports.
  """
  if arg.res != 128:
    raise errors.ConfigError(f"res={arg.res}: the {dataset} teachers are fine-tuned at 128.")
  local = arg.runlocal
  c = config_lib.base()

  # ---- Data: the training split (common.DATASETS), its images kept encoded.
  c.input.data = common.data(dataset)
  c.input.cache = "encoded"
  c.input.batch_size = 512
  c.num_classes = common.DATASETS[dataset]["num_classes"]

  # ---- Preprocessing (BiT-HyperRule): the image resized to 160x160, a random
  # 128px crop and a flip; evaluation: the short side to 160, the central 128.
  r = common.res(arg.res, local)
  c.input.pp = f"decode|resize({r * 5 // 4})"
  c.input.pp_random = f"random_crop({r})|flip_lr"
  c.input.pp_fixed = f"resize_small({r * 5 // 4})|central_crop({r})"
  c.input.pp_post = "value_range(-1, 1)"
  pp_eval = f"decode|resize_small({r * 5 // 4})|central_crop({r})|value_range(-1, 1)"

  bit_hyperrule_finetune(c, res=r, init="BiT-M-R152x2.npz",
                         **hyperrule_schedule(common.DATASETS[dataset]["train_size"]))
  c.log_training_steps, c.ckpt_steps = log_training_steps, ckpt_steps

  # ---- Evaluators: accuracy on every split, calibration on validation.
  for split in ("train", "val", "test"):
    common.add_eval(c, split, "classification", dataset, split, pp=pp_eval, cache_raw=False,
                    log_steps=log_steps)
  common.add_eval(c, "calib_val", "calibration", dataset, "val", pp=pp_eval, cache_raw=False,
                  log_steps=log_steps)

  if local:
    shrink_teacher_for_local(c)
  return c


# ---- ImageNet (configs/imagenet_r50.py, imagenet_mobilenet.py, teachers/imagenet.py) ----


def imagenet_input(c: mlc.ConfigDict, batch_size: int) -> None:
  """ImageNet-1k streamed from TFDS 'train' (too large to cache), a shuffle
  buffer of 250,000 encoded JPEGs (~30 GB) per process."""
  c.input.data = common.data("imagenet")
  c.input.cache = "none"
  c.input.shuffle_buffer_size = 250_000
  c.input.batch_size = batch_size
  c.num_classes = common.DATASETS["imagenet"]["num_classes"]


def imagenet_shared_crop(c: mlc.ConfigDict, view: int) -> str:
  """One inception crop decoded straight from the JPEG (only its window is
  decoded) and a flip, kept at its own size: each model's image is a resize of
  it to the model's resolution. The fixed view: the short side to view / 0.875,
  the central `view` px (ImageNet's 87.5% crop), resized down for smaller
  models, so every model sees the same crop. Returns the evaluators' pp
  string (the fixed view)."""
  c.input.pp = ""
  c.input.pp_random = "decode_jpeg_and_inception_crop|flip_lr"
  c.input.pp_fixed = f"decode|resize_small({round(view / 0.875)})|central_crop({view})"
  c.input.pp_post = "value_range(-1, 1)"
  return f"{c.input.pp_fixed}|value_range(-1, 1)"


def paper_imagenet_teachers(c: mlc.ConfigDict, resolutions: tuple[int, ...],
                            runlocal: bool) -> None:
  """The paper's BiT-M R152x2 ImageNet teachers t1, t2, ... at `resolutions`.

  Released as gs://bit_models/distill/R152x2_T_{res}.npz, trained with
  big_vision's BiT (stem max-pool padded with -inf); runlocal's are the tiny
  ones that configs/teachers/imagenet.py:res=...,runlocal trains (zeros).
  """
  c.teachers = tuple(f"t{i}" for i in range(1, len(resolutions) + 1))
  for name, pixels in zip(c.teachers, resolutions):
    c[f"{name}_name"] = "bit"
    c[name] = dict(depth=152, width=2.0, stem_pool_pad="neg_inf")
    c[f"{name}_res"] = common.res(pixels, runlocal)
    c[f"{name}_init"] = (f"workdirs/teachers/imagenet_local_{pixels}/student.npz" if runlocal
                         else f"gs://bit_models/distill/R152x2_T_{pixels}.npz")
  c.compute_dtype = "bfloat16"


# The paper's ImageNet distillation settings (its Section 3; big_vision's
# released config), for every student: temperature 1, lr 0.03, weight decay
# 3e-4, 5,000 warm-up steps, 1,200 epochs (the release's "middle ground";
# Table 3 also reports 300, 4,800 and 9,600: `--config.total_epochs=`).
IMAGENET_DISTILL = dict(t=1.0, lr=0.03, wd=3e-4, warmup_steps=5000, epochs=1200,
                        log_training_steps=50)


def imagenet_distill(c: mlc.ConfigDict, pp_eval: str) -> None:
  """Function matching with IMAGENET_DISTILL (the per-teacher KLs summed:
  distilling from the teachers' probability-space ensemble), and the
  evaluators: accuracy and distances on train[:10000] and validation,
  calibration on validation, every 10 epochs."""
  function_matching(c, **IMAGENET_DISTILL)
  add_distill_evals(c, "imagenet", ("train", "val"), ("val",), pp=pp_eval, cache_raw=False,
                    log_epochs=10)
