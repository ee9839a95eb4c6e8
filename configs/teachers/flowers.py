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
from big_distill.configs import recipes

# How often the run logs training, checkpoints and evaluates.
LOG_TRAINING_STEPS, CKPT_STEPS, EVAL_STEPS = 10, 500, 50


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, res=128, runlocal=False)
  # BiT-M R152x2 from BiT-M-R152x2.npz at 128px, BiT-HyperRule for 1,020 images
  # (recipes.hyperrule_schedule): 500 steps of batch 512, warm-up 100, no mixup; SGD, lr 0.003 at
  # batch 512, no weight decay. `:runlocal`: a tiny R26 from scratch for 3 steps.
  return recipes.small_data_teacher("flowers", arg, log_training_steps=LOG_TRAINING_STEPS,
                                    ckpt_steps=CKPT_STEPS, log_steps=EVAL_STEPS)
