r"""Fashion-MNIST student: the paper's small-data setting (Flowers102) in miniature.

A BiT R26x0.125 student (~4x fewer FLOPs than the teacher) learns from the
R26x0.25 teacher of configs/fmnist_teacher.py on a fixed, class-balanced
subset of the teacher's own training split `train[:50000]`: 10 images per
class (`images=100`, Flowers102's 10 per class) or 102 per class
(`images=1020`, Flowers102's size), or all 50,000 (`images=50000`, claim 11
of docs/results.md: is the gap left the data's or the student's). Selection looks only at validation
(`train[50000:]`, seen by no model); test is read once, at the last step.

    python -m big_distill.train --config=configs/fmnist_distill.py:arm=funmatch,epochs=1000 \
        --config.t1_init=$HOME/bd_runs/fmnist/teacher_e30 --workdir=$HOME/bd_runs/fm_e1000

The arms (`:arm=...`), in the paper's names (Section 3.1, PAPER_NOTES.md):
  supervised   no teacher: labels, same crops; mixup selectable (`mixup=0|1`)
  fix_rs       `fix/rs`: both models see the whole image resized; the teacher's
               outputs computed once before training
  fix_ic_ens   `fix/ic_ens`: the teacher's prediction averaged over 1,000
               inception crops (computed once); the student on inception crops
  shampoo_paper  funmatch with the paper's Shampoo (SGD grafting, Nesterov)
  fixed        the teacher sees the whole image resized (its prediction is a
               constant per image, precomputable), the student random
               inception crops. That is the paper's `fix/cc` idea (a fixed
               teacher view, random student crops); its fixed view is the
               resize of `fix/rs`, because Fashion-MNIST's 28px items fill
               the frame and a central crop would cut them.
  independent  `ind/ic`: teacher and student each their own inception crop
  consistent   `same/ic`: one shared inception crop, no mixup
  funmatch     function matching: one shared inception crop + mixup (default)
  shampoo      funmatch with Shampoo instead of Adam (config.optim.shampoo_*)
  lowres       funmatch with the student at 24px (a resize of the 32px view
               the teacher sees)
Other arguments: epochs (passes over the subset), lr (0: 0.003), mixup (-1:
the arm's own: on for supervised/funmatch/shampoo/lowres), loss ('kl', or
'hard': the teacher's top-1 as the label, for the calibration claim), seed
(model init, data order, crops and mixup: paired across arms), crop (the
inception crop's smallest area in %, 5 = the paper's), evals (validation
evaluations per run), t (temperature), width/teacher_width/teacher_depth,
batch, wd, data_dir, runlocal (a few steps, for tests).

Metrics: `val/*` (classification on train[50000:], `evals` times per run),
`train_dist/t1_kl` (KL to the teacher on the clean training images, at the
same times), `train/t1_loss` (the objective, on the views it trains on);
at the last step only: `test/*`, `test_dist/t1_agree_top1`, `test_dist/t1_kl`
and `test_cal/student_ece`. Time on 2 shared CPU cores: ~500-1000 training
images/s plus ~30 s of start-up (docs/results.md has the measured table).
"""

from big_distill import config_lib
from configs import fmnist_teacher as fm

ARMS = ("funmatch", "consistent", "independent", "fixed", "supervised", "shampoo", "lowres",
        "fix_rs", "fix_ic_ens", "shampoo_paper")
# Images in the student's training set: 10 or 102 per class (a balanced
# subset), or all of train[:50000] (the teacher's own training set; claim 11).
SETTINGS = (100, 1020, 50000)
ALL = 50000
_VIEWS = {"independent": "independent", "fixed": "fixed", "fix_rs": "fixed",
          "fix_ic_ens": "fixed"}
_NO_MIXUP = ("consistent", "independent", "fixed", "fix_rs", "fix_ic_ens")


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg, arm="funmatch", images=100, epochs=300.0, lr=0.0, mixup=-1.0, loss="kl",
      seed=0, crop=5, evals=4, t=1.0, width=0.125, teacher_width=0.25, teacher_depth=26,
      batch=64, wd=1e-4, data_dir="", runlocal=False)
  if a.arm not in ARMS:
    raise ValueError(f"Unknown arm {a.arm!r} in --config=configs/fmnist_distill.py:arm=...; "
                     f"choose one of {', '.join(ARMS)}.")
  if a.images not in SETTINGS:
    raise ValueError(f"images={a.images}: the miniature has the settings "
                     f"{' and '.join(map(str, SETTINGS))} (10 and 102 images per class).")
  c = config_lib.base()
  c.seed = a.seed
  c.input.data = fm.data(fm.TRAIN_SPLIT, a.data_dir)
  c.input.data.balanced_subset = None if a.images == ALL else a.images
  c.input.cache = "encoded"
  c.input.batch_size = 16 if a.runlocal else a.batch
  c.input.pp = fm.TRAIN_PP
  # The paper's inception crop: area 5%..100%, aspect 3/4..4/3, then a flip.
  c.input.pp_random = f"inception_crop(32, area_min={a.crop})|flip_lr"
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
  val = "train[50000:50064]" if a.runlocal else fm.VAL_SPLIT
  test = "test[:64]" if a.runlocal else "test"
  c.evals.val = fm.classification_eval(val, every, a.data_dir)
  c.evals.test = fm.classification_eval(test, -1, a.data_dir)
  c.evals.test_cal = fm.classification_eval(test, -1, a.data_dir, "calibration")
  c.evals.test_cal.models = "student"
  if c.teachers:
    c.evals.test_dist = fm.classification_eval(test, -1, a.data_dir, "distance")
    c.evals.train_dist = fm.classification_eval(fm.TRAIN_SPLIT, every, a.data_dir, "distance")
    # On all 50,000 images: the fit on the 1,020-image subset (an evaluation of
    # 50,000 images `evals` times would cost more than the training).
    c.evals.train_dist.data.balanced_subset = 1020 if a.images == ALL else a.images
  for e in c.evals.values():
    e.batch_size = 16 if a.runlocal else (100 if e.data.balanced_subset else 500)
  return c
