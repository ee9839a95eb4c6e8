r"""Fashion-MNIST miniature of the paper's MobileNet students (Section 3.6).

configs/fmnist_distill.py's setting, argument for argument (its 100-image
subset of train[:50000], its schedule, crops, mixup, evaluators; validation
`train[50000:]` for selection, test once at the end), with the BiT R26x0.125
student replaced by a MobileNet v3 Small scaled down to 32px
(`small_input`: 8x downsampling, a 4x4 final map, as a 128px image gets in the
full network). Width 0.25 matches the BiT student's parameters: 255,370
against 223,922 (+14%) for 10 classes; it costs 8.0 MFLOPs per 32px image
against BiT's 3.4 (the BiT R26x0.25 teacher: 12.2). Narrower would not help:
below 0.75 the stem and the 1024-wide head conv do not shrink (timm's rule).

    python -m big_distill.train \
        --config=configs/fmnist_mobilenet.py:images=100,epochs=300,lr=0.01 \
        --config.t1_init=$HOME/bd_runs/fmnist/teacher_e30 --workdir=$HOME/bd_runs/other/mnv3_lr0.01

Arguments: `norm=group|batch` (default group, the paper's choice "for most
experiments"; batch: BatchNorm, its statistics carried in the train state),
`mnv3_width` (0.25), `variant=small|large`; every other argument is
fmnist_distill.py's (arm, images, epochs, lr, seed, runlocal, ...).
Results: docs/results.md ("Issue 13's rows"), tables in docs/results/mobilenet/.
"""

from big_distill.configs import fmnist

OWN = dict(norm="group", mnv3_width=0.25, variant="small")


def get_config(arg=None):
  a, rest = fmnist.split_arg(arg, OWN)
  c = fmnist.distill(rest)  # configs/fmnist_distill.py's config.
  c.student_name = "mobilenet_v3"
  c.student = dict(variant=a.variant, width=a.mnv3_width, norm=a.norm, small_input=True)
  return c
