r"""Flowers102 teacher: BiT-M R152x2 fine-tuned at 128px with BiT-HyperRule.

The teacher that configs/flowers_r50.py distills (the paper used teachers
fine-tuned at 128px on the small data sets). From the repository root, after
downloading the public BiT-M checkpoint:

    wget https://storage.googleapis.com/bit_models/BiT-M-R152x2.npz
    python -m big_distill.train --config=configs/teachers/flowers.py \
        --workdir=$PWD/workdirs/teachers/flowers_r152x2

The run writes workdirs/teachers/flowers_r152x2/student.npz, the default
`t1_init` of configs/flowers_r50.py. The BiT-M file is `config.student_init`
(a path or a gs:// URL:
`--config.student_init=gs://bit_models/BiT-M-R152x2.npz`); its 21,843-class
head is replaced by a zero head for the 102 classes. BiT-HyperRule for 1,020
images: 500 steps of batch 512 (250 epochs), warm-up 100 steps, no mixup;
random 128px crops of the image resized to 160x160. `:runlocal` fine-tunes a
tiny R26 from scratch for 3 steps instead, into
workdirs/teachers/flowers_local, the teacher of
`configs/flowers_r50.py:runlocal`.

Run time: an estimate of ~10 minutes on a TPU v2-8 (500 steps of 512
images at 128px; scaled from the distillation timings by FLOPs), most of it
start-up and compilation. Expected accuracy: high 90s test top-1
(`test/student_top1`: the model trained here is this run's "student"); a
public reproduction's R101x3 teacher reached 98.2%. Logs:
WORKDIR/metrics.jsonl.
"""

from big_distill import config_lib
from big_distill import errors
from big_distill.configs import common


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, res=128, runlocal=False)
  if arg.res != 128:
    raise errors.ConfigError(f"res={arg.res}: the flowers teachers are fine-tuned at 128.")
  local = arg.runlocal
  c = config_lib.base()

  # ---- Data (Flowers102): its 1,020 training images, TFDS validation and test.
  c.input.data = common.data("flowers")
  c.input.cache = "encoded"
  c.input.batch_size = 512
  c.num_classes = 102

  # ---- Preprocessing (BiT-HyperRule): the image resized to 160x160, a random
  # 128px crop and a flip; evaluation: the short side to 160, the central 128.
  r = common.res(arg.res, local)
  c.input.pp = f"decode|resize({r * 5 // 4})"
  c.input.pp_random = f"random_crop({r})|flip_lr"
  c.input.pp_fixed = f"resize_small({r * 5 // 4})|central_crop({r})"
  c.input.pp_post = "value_range(-1, 1)"
  pp_eval = f"decode|resize_small({r * 5 // 4})|central_crop({r})|value_range(-1, 1)"

  # ---- Model: BiT-M R152x2 (supervised: no teachers; the labelled
  # cross-entropy is the loss). The public BiT-M checkpoint
  # (https://storage.googleapis.com/bit_models/BiT-M-R152x2.npz; gs:// paths
  # work too); bit.load replaces its 21,843-class head by a zero head.
  c.teachers = ()
  c.student_name = "bit"
  c.student = dict(depth=152, width=2.0)
  c.student_res = r
  c.student_init = "BiT-M-R152x2.npz"
  c.compute_dtype = "bfloat16"

  # ---- Optimizer and schedule (BiT-HyperRule for fewer than 20k images):
  # SGD with momentum 0.9, lr 0.003 at batch 512, no weight decay, 500 steps,
  # warm-up 100, no mixup. BiT divides the lr by 10 at 30%, 60% and 90%
  # of the steps; the trainer has no step schedule, so a linear decay to 0
  # stands in for it.
  c.mixup.p = 0.0
  c.optim.name = "sgd"
  c.optim.momentum, c.optim.nesterov = 0.9, False
  c.optim.mu_dtype = "float32"
  c.lr = 0.003
  c.wd = 0.0
  c.grad_clip_norm = None
  c.schedule.decay_type = "linear"
  c.schedule.linear_end = 0.0
  c.schedule.warmup_steps = 100
  c.total_steps = 500
  c.log_training_steps, c.ckpt_steps = 10, 500

  # ---- Evaluators: accuracy on every split, calibration on validation.
  for split in ("train", "val", "test"):
    common.add_eval(c, split, "classification", "flowers", split, pp=pp_eval, cache_raw=False,
                    log_steps=50)
  common.add_eval(c, "calib_val", "calibration", "flowers", "val", pp=pp_eval, cache_raw=False,
                  log_steps=50)

  if local:
    common.shrink_for_local(c)
    c.lr = 0.003 * c.input.batch_size / 512  # BiT-HyperRule scales the lr with the batch.
  return c
