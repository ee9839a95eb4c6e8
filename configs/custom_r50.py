r"""Your own data set: function matching from your teacher into a BiT R50x1.

`:data=NAME` (and `,data_dir=DIR`) as configs/teachers/custom.py, whose run
gives the teacher: by default its workdir, workdirs/teachers/custom_data_NAME
(from the same working directory), else `--config.t1_init=PATH/student.npz`.
The class count, splits and sizes come from the data set's TFDS metadata
(big_distill/configs/custom.py): training reads `train` (or its first 90%),
selection `validation` (or the last 10% of train), final numbers `test`.

    python -m big_distill.train --config=configs/custom_r50.py:data=NAME,variant=fast

The paper's small-data recipe (Section 3; configs/flowers_r50.py): one
inception crop and flip shared by student and teacher (consistent views),
mixup, KL at temperature t, Adam, warm-up then cosine decay; an R50x1 from
scratch at 128px (`:student=mobilenet_v3`: MobileNet v3 Large with
GroupNorm), the teacher at the resolution it was fine-tuned at
(BiT-HyperRule's, or `:teacher_res=`).

`:variant=fast|medium|long` are the paper's three Flowers102 schedules (10,000,
100,000 and 1,000,000 epochs of its 1,020 images, with their lr, weight decay
and temperature), scaled by training-set size: the run sees as many images as
the Flowers run does (epochs = Flowers' epochs x 1,020 / your training
images), so a data set of Flowers' size gets Flowers' budgets. The paper
reports, on Flowers102 from a 97.8% teacher: 92.8% test top-1 (`fast`),
95.5% (`medium`), 96.9% (`long`), and 77.5% after 1,000 epochs: patience
pays. Watch `val/student_top1` and `dist_val/t1_agree_top1`.

The student is the workdir's `student.npz` (BiT's layout); `python -m
big_distill.export --workdir=WORKDIR --layout=big_vision` writes it for
big_vision (`--layout=bit`: BiT's and timm's), as WORKDIR/student_LAYOUT.npz.

`:lr=` replaces the variant's learning rate (a sweep's axis).
`:runlocal`: tiny models, 3 steps, on CPU; its teacher is
configs/teachers/custom.py:data=NAME,runlocal's workdir.
"""

from big_distill import config_lib
from big_distill import errors
from big_distill.configs import common
from big_distill.configs import custom
from big_distill.configs import recipes

# Flowers102's released settings (configs/flowers_r50.py): epochs, lr, wd, t.
FLOWERS_IMAGES = 1020
VARIANTS = dict(fast=(10_000, 0.003, 3e-4, 10.0), medium=(100_000, 0.001, 1e-4, 1.0),
                long=(1_000_000, 0.0003, 1e-5, 1.0))


def get_config(arg=None):
  a = config_lib.parse_arg(arg, data="", data_dir="", variant="fast", student="bit",
                           teacher_res=0, lr=0.0, runlocal=False)
  if a.variant not in VARIANTS:
    raise errors.ConfigError(f"Unknown variant={a.variant!r}; known: {', '.join(VARIANTS)}.")
  d = custom.data(a.data, a.data_dir or None)
  flowers_epochs, lr, wd, t = VARIANTS[a.variant]
  epochs = flowers_epochs * FLOWERS_IMAGES / d.train_size
  local = a.runlocal
  c = config_lib.base()

  # ---- Data: the training split, decoded once and kept in host memory
  # (`encoded` for more than ~20,000 images, whose pixels would not fit).
  c.input.data = custom.data_config(d, d.train)
  c.input.cache = "decoded" if d.train_size <= 20_000 else "encoded"
  c.input.batch_size = 512
  c.num_classes = d.num_classes

  # ---- Preprocessing: one inception crop and a flip at the larger model's
  # resolution, each model's copy resized to its own; evaluation resizes the
  # short side to 5/4 of it and takes the central crop.
  s = common.res(128, local)
  t_res = common.res(a.teacher_res or custom.hyperrule_res(d.image_size)[1], local)
  r = max(s, t_res)
  pp_eval = recipes.shared_inception_crop(c, r)

  # ---- Models: the student from scratch; the teacher that
  # configs/teachers/custom.py fine-tuned (BiT's zero stem padding).
  teacher_arg = f"data={a.data}" + (f",data_dir={a.data_dir}" if a.data_dir else "")
  recipes.student_and_teacher(
      c, a.student, res=s, teacher=dict(depth=152, width=2.0), teacher_res=t_res,
      teacher_init=config_lib.default_workdir(
          f"configs/teachers/custom.py:{teacher_arg}" + (",runlocal" if local else "")))

  # ---- Distillation, optimizer and schedule: function matching (consistent
  # views, mixup, KL at t), Adam, clipping at 1.0, decoupled weight decay,
  # warm-up then cosine decay (big_distill/configs/recipes.py).
  # `:lr=`: another lr (e.g. swept); 0: the variant's.
  recipes.function_matching(c, t=t, lr=a.lr or lr, wd=wd, warmup_steps=1500, epochs=epochs,
                            log_training_steps=100)

  # ---- Evaluators: validation (selection) 20 times, the test split at the end.
  for prefix, kind in (("", "classification"), ("dist_", "distance"),
                       ("calib_", "calibration")):
    custom.add_eval(c, prefix + "val", kind, d, d.val, pp=pp_eval, log_epochs=epochs / 20)
    custom.add_eval(c, prefix + "test", kind, d, d.test, pp=pp_eval, log_steps=-1)
  if local:
    common.shrink_for_local(c)
  return c
