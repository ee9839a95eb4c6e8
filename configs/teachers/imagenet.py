r"""ImageNet teachers: BiT-M R152x2 fine-tuned at 224px or 384px (`:res=`).

The two teachers of configs/imagenet_r50.py (t1 at 224px, t2 at 384px). From
the repository root, after downloading the public BiT-M checkpoint:

    wget https://storage.googleapis.com/bit_models/BiT-M-R152x2.npz
    python -m big_distill.train --config=configs/teachers/imagenet.py:res=224 \
        --workdir=$PWD/workdirs/teachers/imagenet_r152x2_224
    python -m big_distill.train --config=configs/teachers/imagenet.py:res=384 \
        --workdir=$PWD/workdirs/teachers/imagenet_r152x2_384

The runs write the student.npz files that configs/imagenet_r50.py reads as
`t1_init` and `t2_init`. The BiT-M file is `config.student_init` (a path or a
gs:// URL); its 21,843-class head is replaced by a zero head for 1,000
classes. BiT-HyperRule for more than 500k images: 20,000 steps of batch 512
(~8 epochs), warm-up 500, mixup 0.1. Training crop: an inception crop at
224px (the paper's 224px teacher was trained so, "ic224"), a random 384px
crop of the image resized to 439x439 at 384px. `:runlocal` trains a tiny R26
from scratch for 3 steps into workdirs/teachers/imagenet_local_<res>.

Run time, estimates scaled from the distillation timings by FLOPs: ~8 h at
224px and ~1 day at 384px on a TPU v2-8 (R152x2 at 384px with 64 images a
core may need a v3 or --config.remat_student=True for memory). Expected
accuracy: the paper's teachers reached 83.0% (224px) and 84.3% (384px) top-1
(`val/student_top1`: the model trained here is this run's "student").
Logs: WORKDIR/metrics.jsonl.
"""

from big_distill import config_lib
from big_distill import errors
from big_distill.configs import common
from big_distill.configs import recipes


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, res=224, runlocal=False)
  if arg.res not in (224, 384):
    raise errors.ConfigError(f"res={arg.res}: the imagenet teachers are fine-tuned at 224, 384.")
  local = arg.runlocal
  c = config_lib.base()

  # ---- Data (ImageNet-1k): streamed from TFDS 'train' (too large to cache);
  # 'validation' is the test set papers report.
  recipes.imagenet_input(c, batch_size=512)  # ~30 GB of shuffle buffer per process.

  # ---- Preprocessing: at 224px an inception crop decoded straight from the
  # JPEG (the paper's 224px teacher was trained so, "ic224"); at 384px the
  # image resized to 439x439 and a random crop. Evaluation: the short side to
  # res / 0.875, the central res x res.
  r = common.res(arg.res, local)
  short = round(r / 0.875)
  if arg.res == 224:
    c.input.pp = ""  # The crop decodes only its window of the JPEG.
    c.input.pp_random = f"decode_jpeg_and_inception_crop({r})|flip_lr"
    c.input.pp_fixed = f"decode|resize_small({short})|central_crop({r})"
  else:
    c.input.pp = f"decode|resize({short})"
    c.input.pp_random = f"random_crop({r})|flip_lr"
    c.input.pp_fixed = f"resize_small({short})|central_crop({r})"
  c.input.pp_post = "value_range(-1, 1)"
  pp_eval = f"decode|resize_small({short})|central_crop({r})|value_range(-1, 1)"

  # ---- Model, optimizer and schedule (BiT-HyperRule for more than 500k
  # images; big_distill/configs/recipes.py): BiT-M R152x2 from the public
  # checkpoint (https://storage.googleapis.com/bit_models/BiT-M-R152x2.npz),
  # SGD, lr 0.003 at batch 512, no weight decay, 20,000 steps, warm-up 500,
  # mixup 0.1.
  recipes.bit_hyperrule_finetune(c, res=r, init="BiT-M-R152x2.npz", steps=20_000,
                                 warmup=500, mixup=0.1)
  c.log_training_steps, c.ckpt_steps = 50, 1000

  # ---- Evaluators: accuracy on train[:10000] and validation, calibration.
  for split in ("train", "val"):
    common.add_eval(c, split, "classification", "imagenet", split, pp=pp_eval,
                    cache_raw=False, log_steps=2000)
  common.add_eval(c, "calib_val", "calibration", "imagenet", "val", pp=pp_eval,
                  cache_raw=False, log_steps=2000)

  if local:
    recipes.shrink_teacher_for_local(c)
  return c
