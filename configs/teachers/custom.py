r"""Your own data set's teacher: BiT-M R152x2 fine-tuned with BiT-HyperRule.

`:data=NAME` is a TFDS name: a folder prepared by `python -m
big_distill.data.prepare folder --path=DIR --name=NAME`, or a catalog data set
prepared with `python -m big_distill.data.prepare NAME`. Add `,data_dir=DIR`
where it was prepared elsewhere than TFDS' default. Nothing about the data is
typed here: the class count, the splits, their sizes and the image size come
from its TFDS metadata (big_distill/configs/custom.py). Training reads
`train`; selection `validation`, or the last 10% of train where there is none
(the log says so); `test`, where there is one, gives the final numbers.

    wget https://storage.googleapis.com/bit_models/BiT-M-R152x2.npz
    python -m big_distill.train --config=configs/teachers/custom.py:data=NAME \
        --config.student_init=BiT-M-R152x2.npz

The run's workdir (by default workdirs/teachers/custom_data_NAME) ends with
`student.npz`: the teacher, which `configs/custom_r50.py:data=NAME` reads by
default (or pass it as `--config.t1_init=`). The init defaults to the
public gs://bit_models/BiT-M-R152x2.npz; its 21,843-class head is replaced
by a zero head of the data set's class count. Any teacher init the models
support works (`--config.student_init=`, with `--config.student.depth=` and
`.width=` to match it).

BiT-HyperRule: SGD with momentum 0.9, lr 0.003 at batch 512, no weight
decay; 500 steps (warm-up 100, no mixup) under 20,000 training images, 10,000
steps (warm-up 500, mixup 0.1) under 500,000, else 20,000; images under 96x96
px are resized to 160x160 and cropped to 128x128 at random (and flipped),
larger ones resized to 512 and cropped to 480; evaluation takes the central
crop. `:res=` sets the crop instead (the resize is 5/4 of it). BiT divides
the lr by 10 at 30%, 60% and 90% of the steps; the trainer has no step
schedule, so a linear decay to 0 stands in for it.

`:runlocal`: a tiny R26 from scratch, 3 steps, no download, into
workdirs/teachers/custom_data_NAME_runlocal, the teacher of
`configs/custom_r50.py:data=NAME,runlocal`.
"""

from big_distill import config_lib
from big_distill.configs import common
from big_distill.configs import custom
from big_distill.configs import recipes


def get_config(arg=None):
  a = config_lib.parse_arg(arg, data="", data_dir="", res=0, runlocal=False)
  d = custom.data(a.data, a.data_dir or None)
  local = a.runlocal
  c = config_lib.base()

  # ---- Data: the training split, its images kept encoded in host memory.
  c.input.data = custom.data_config(d, d.train)
  c.input.cache = "encoded"
  c.input.batch_size = 512
  c.num_classes = d.num_classes

  # ---- Preprocessing (BiT-HyperRule): the image resized to a square, a random
  # crop and a flip; evaluation: the short side resized, the central crop.
  resize, crop = (a.res * 5 // 4, a.res) if a.res else custom.hyperrule_res(d.image_size)
  resize, r = common.res(resize, local), common.res(crop, local)
  c.input.pp = f"decode|resize({resize})"
  c.input.pp_random = f"random_crop({r})|flip_lr"
  c.input.pp_fixed = f"resize_small({resize})|central_crop({r})"
  c.input.pp_post = "value_range(-1, 1)"
  pp_eval = f"decode|resize_small({resize})|central_crop({r})|value_range(-1, 1)"

  # ---- Model, optimizer and schedule: BiT-M R152x2 fine-tuned with labels,
  # BiT-HyperRule by training-set size (big_distill/configs/recipes.py).
  steps, warmup, mixup = custom.hyperrule(d.train_size)
  recipes.bit_hyperrule_finetune(c, res=r, init="gs://bit_models/BiT-M-R152x2.npz",
                                 steps=steps, warmup=warmup, mixup=mixup)
  c.log_training_steps, c.ckpt_steps = 10, min(steps, 1000)

  # ---- Evaluators: validation 10 times (selection), test at the end.
  custom.add_eval(c, "val", "classification", d, d.val, pp=pp_eval, log_steps=steps // 10)
  custom.add_eval(c, "calib_val", "calibration", d, d.val, pp=pp_eval, log_steps=steps // 10)
  custom.add_eval(c, "test", "classification", d, d.test, pp=pp_eval, log_steps=-1)

  if local:
    recipes.shrink_teacher_for_local(c)
  return c
