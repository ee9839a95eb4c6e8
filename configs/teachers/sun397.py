r"""SUN397 teacher: BiT-M R152x2 fine-tuned at 128px with BiT-HyperRule.

The teacher that configs/sun397_r50.py distills. TFDS sun397 (config 'tfds'):
train (76,128 images), validation, test. From the repository root, after
downloading the public BiT-M checkpoint:

    wget https://storage.googleapis.com/bit_models/BiT-M-R152x2.npz
    python -m big_distill.train --config=configs/teachers/sun397.py \
        --workdir=$PWD/workdirs/teachers/sun397_r152x2

The run writes workdirs/teachers/sun397_r152x2/student.npz, the default
`t1_init` of configs/sun397_r50.py. The BiT-M file is `config.student_init` (a
path or a gs:// URL); its 21,843-class head is replaced by a zero head for 397
classes. BiT-HyperRule for 20k-500k images: 10,000 steps of batch 512 (~67
epochs), warm-up 500, mixup 0.1; random 128px crops of the image resized to
160x160. `:runlocal` trains a tiny R26 from scratch for 3 steps into
workdirs/teachers/sun397_local, the teacher of
`configs/sun397_r50.py:runlocal`.

Run time: an estimate of ~1.5 h on a TPU v2-8 (scaled from the distillation
timings by FLOPs). Expected accuracy: the paper's SUN397 teacher reached 74.22%
test top-1 (Table 4; `test/student_top1`: the model trained here is this
run's "student"). Logs:
WORKDIR/metrics.jsonl.
"""

from big_distill import config_lib
from big_distill.configs import recipes

# How often the run logs training, checkpoints and evaluates.
LOG_TRAINING_STEPS, CKPT_STEPS, EVAL_STEPS = 50, 1000, 1000


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, res=128, runlocal=False)
  # BiT-M R152x2 from BiT-M-R152x2.npz at 128px, BiT-HyperRule for 76,128 images
  # (recipes.hyperrule_schedule): 10,000 steps of batch 512, warm-up 500, mixup 0.1; SGD, lr 0.003
  # at batch 512, no weight decay. `:runlocal`: a tiny R26 from scratch for 3 steps.
  return recipes.small_data_teacher("sun397", arg, log_training_steps=LOG_TRAINING_STEPS,
                                    ckpt_steps=CKPT_STEPS, log_steps=EVAL_STEPS)
