r"""Fashion-MNIST student: the paper's "works with 1,020 images" setting, offline.

A smaller BiT student (R26 at half the teacher's width: ~4x fewer FLOPs)
learns from the teacher of configs/fmnist_teacher.py on a fixed,
class-balanced 1,020-image subset of the training split (Flowers102's
training-set size), and is tested on all 10,000 test images.

    python -m big_distill.train --config=configs/fmnist_distill.py:epochs=300 \
        --config.t1_init=workdirs/fmnist/teacher --workdir=workdirs/fmnist/funmatch

Arguments (`:arm=funmatch,epochs=1000`): the arms of the paper's comparison:
  funmatch     one shared inception crop + mixup for teacher and student (default)
  consistent   one shared crop, no mixup
  independent  a separate random crop for each
  fixed        the teacher sees the whole image, the student random crops
  supervised   no teacher: labels with the same augmentation and mixup
  shampoo      funmatch with Shampoo instead of Adam
  lowres       funmatch with the student at 24px, a resize of the teacher's 32px crop
epochs: passes over the 1,020 images; width/teacher_width/teacher_depth:
the models; lr: the learning rate (default per arm); runlocal: a few steps.

Time on this project's CI machine (2 CPU cores): ~1.5 s per epoch for the
default arm. Expected: the student's test accuracy climbs toward the
teacher's with more epochs (docs/results.md has the measured table).
"""

from big_distill import config_lib
from configs import fmnist_teacher as fm

ARMS = ("funmatch", "consistent", "independent", "fixed", "supervised", "shampoo", "lowres")
SUBSET = 1020


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg, arm="funmatch", epochs=300.0, width=0.125, teacher_width=0.25,
      teacher_depth=26, data_dir="", batch=128, lr=0.0, wd=1e-4, t=1.0,
      eval_every=0, runlocal=False)
  if a.arm not in ARMS:
    raise ValueError(f"Unknown arm {a.arm!r}; choose one of {', '.join(ARMS)}.")
  c = config_lib.base()
  c.input.data = fm.data("train", a.data_dir)
  c.input.data.balanced_subset = SUBSET
  c.input.cache_raw = True
  c.input.batch_size = 16 if a.runlocal else a.batch
  c.input.pp = fm.TRAIN_PP
  c.input.pp_random = fm.RANDOM_VIEW
  c.input.pp_fixed = "resize(32)"  # The whole image: the fixed teacher's view.
  c.input.pp_post = "value_range(-1, 1)"

  c.num_classes = 10
  c.student = dict(depth=26, width=a.width)
  c.student_res = 24 if a.arm == "lowres" else 32
  if a.arm == "supervised":
    c.teachers = ()
    c.distill.label_weight = 1.0
  else:
    c.teachers = ("t1",)
    c.t1 = dict(depth=a.teacher_depth, width=a.teacher_width)
    c.t1_res = 32
    c.t1_init = "workdirs/fmnist/teacher"
  c.distill.views = {"independent": "independent", "fixed": "fixed"}.get(a.arm, "consistent")
  c.distill.loss = "kl"
  c.distill.t = a.t
  c.mixup.p = 0.0 if a.arm in ("consistent", "independent", "fixed") else 1.0

  c.optim.name = "shampoo" if a.arm == "shampoo" else "adam"
  c.lr = a.lr or 0.003
  c.wd = a.wd
  steps = 3 if a.runlocal else max(int(round(SUBSET * a.epochs / a.batch)), 1)
  c.total_steps = steps
  c.schedule.warmup_steps = min(100, steps // 10)
  c.log_training_steps = max(steps // 50, 1)
  c.ckpt_steps = max(steps // 4, 1)

  every = 3 if a.runlocal else (a.eval_every or max(steps // 8, 1))
  test_split = "test[:64]" if a.runlocal else "test"
  c.evals.test = fm.classification_eval(test_split, every, a.data_dir)
  if c.teachers:
    c.evals.dist_test = fm.classification_eval(test_split, every, a.data_dir, "distance")
    # Distance on the 1,020 training images: how closely the student fits
    # the teacher where it was trained (the fixed teacher's overfitting).
    c.evals.dist_train = fm.classification_eval("train", every, a.data_dir, "distance")
    c.evals.dist_train.data.balanced_subset = SUBSET
  if a.runlocal:
    for e in c.evals.values():
      e.batch_size = 16
  return c
