r"""Fashion-MNIST teacher: a BiT ResNetV2 trained with labels on all 60,000 images.

The teacher of the offline demo and of the paper's claims in miniature
(docs/results.md). Images are 3-channel 32px; no pretrained weights.

    python -m big_distill.data.prepare fashion_mnist
    python -m big_distill.train --config=configs/fmnist_teacher.py \
        --workdir=workdirs/fmnist/teacher

Arguments (`:epochs=30,width=0.5`):
  epochs: passes over the 60,000 images (demo: 1.5; CPU, 2 cores: ~1.2 min
          per epoch at width 0.25 when idle, 2.8 min at nice 19 beside a test
          suite. One H100: seconds per epoch).
  width:  BiT width multiplier of the R26 (0.25: 0.88M parameters for 10 classes).
  depth:  BiT depth (26, 50, ...).
  model:  bit (default), or vit: the miniature's ViT teacher instead
          (big_distill/configs/fmnist.py VIT_TEACHER: patch 8, width 128,
          depth 4, 0.82M parameters; width and depth are then unused), the
          same recipe otherwise. docs/results.md "ViT in the miniature":
            python -m big_distill.train --config=configs/fmnist_teacher.py:model=vit,epochs=3,lr=0.001 \
                --workdir=$HOME/bd_runs/fmnist_vit/vit_teacher/epochs=3,lr=0.001,model=vit
  runlocal: a few steps on 1,000 images, for tests.
Measured test accuracy at width 0.25 (docs/results.md, README): 80.93% after
1.5 epochs, 84.32% after 5 and 87.90% after 10 (the evaluations of one
10-epoch run). >93% should need a wider model (width 0.5) and ~30 epochs: a
GPU job, not measured here.
"""

from big_distill import config_lib
from big_distill import errors
from big_distill.configs import fmnist
from big_distill.configs.fmnist import data  # The miniature's data (also big_distill.demo's).


def get_config(arg=None):
  a = config_lib.parse_arg(arg, epochs=2.0, width=0.25, depth=26, data_dir="",
                           batch=128, lr=0.003, split=fmnist.TRAIN_SPLIT, model="bit", runlocal=False)
  if a.model not in fmnist.MODELS:
    raise errors.ConfigError(f"model={a.model!r}: one of {', '.join(fmnist.MODELS)}.")
  c = config_lib.base()
  c.input.data = data("train[:1000]" if a.runlocal else a.split, a.data_dir)
  c.input.cache = "encoded"  # 50,000 28x28 PNGs: ~17 MB.
  c.input.batch_size = 16 if a.runlocal else a.batch
  c.input.shuffle_buffer_size = 10_000
  c.input.pp = fmnist.TRAIN_PP
  c.input.pp_random = fmnist.RANDOM_VIEW
  c.input.pp_fixed = "resize(32)"
  c.input.pp_post = "value_range(-1, 1)"

  c.num_classes = 10
  c.teachers = ()  # Trained with labels: no teacher.
  c.student_name = a.model
  c.student = dict(depth=a.depth, width=a.width) if a.model == "bit" else dict(fmnist.VIT_TEACHER)
  c.student_init = None  # From scratch.
  c.student_res = 32
  c.mixup.p = 0.2  # A little mixup, as BiT-HyperRule for data sets this size.
  c.distill.label_weight = 1.0

  c.optim.name = "adam"
  c.lr = a.lr
  c.wd = 1e-4
  c.total_epochs = 0.02 if a.runlocal else a.epochs
  c.schedule.warmup_steps = 2 if a.runlocal else min(200, int(50_000 * a.epochs // a.batch) // 5)
  c.log_training_steps = 50
  c.ckpt_steps = 500

  # Validation ten times during training; the test split only once, at the end.
  c.evals.val = fmnist.classification_eval("train[50000:50064]" if a.runlocal else fmnist.VAL_SPLIT,
                                    1, a.data_dir)
  c.evals.val.log_steps = None
  c.evals.val.log_epochs = c.total_epochs / 10
  c.evals.test = fmnist.classification_eval("test[:64]" if a.runlocal else "test", -1, a.data_dir)
  for e in c.evals.values():
    e.batch_size = 16 if a.runlocal else 500
  return c
