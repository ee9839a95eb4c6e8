r"""Flowers102: function matching from BiT-M R152x2 (128px) into BiT R50x1 (128px).

Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent" (CVPR 2022), with the released settings for 1,020 training images
(PAPER_NOTES.md). From the repository root, fine-tune the teacher once, then
distill (`variant` = fast | medium | long):

    python -m big_distill.train --config=configs/teachers/flowers.py \
        --workdir=$PWD/workdirs/teachers/flowers_r152x2
    python -m big_distill.train --config=configs/flowers_r50.py:variant=fast \
        --workdir=$PWD/workdirs/flowers_fast

The teacher is read from `config.t1_init` (default
`workdirs/teachers/flowers_r152x2/student.npz`, written by the first command);
point it elsewhere with `--config.t1_init=PATH_OR_GS_URL`. The paper's own
teacher was released as gs://bit_models/distill/R152x2_T_flowers128.npz; it
may be stored in big_vision's parameter layout rather than BiT's (untested
here), and bit.load names any array that does not match. Try everything on a
laptop first (tiny models, 3 steps; see configs/common.py):

    python -m big_distill.train --config=configs/teachers/flowers.py:runlocal \
        --workdir=$PWD/workdirs/teachers/flowers_local
    python -m big_distill.train --config=configs/flowers_r50.py:runlocal \
        --workdir=$PWD/workdirs/flowers_local

`:student=mobilenet_v3`: a MobileNet v3 Large (GroupNorm) student instead
of R50x1 (paper Section 3.6).

Run time (batch 512, ~2 steps per epoch): the paper reports ~1h10m on a TPU
v2-8 for `fast` (19,922 steps). The others are estimates scaled by the number
of images: `medium` (199,219 steps) ~12 h, `long` (1,992,188 steps) ~5 days
on a v2-8; the reference release reports ~25 h for `long` on a v3-32.

Expected accuracy: the teacher's test top-1 (`test/t1_top1`, logged at every
eval) is the ceiling; the student's (`test/student_top1`) climbs towards it
with patience, and the paper's curves (Fig. 3) keep improving up to `long`
without overfitting. For scale, a public Keras reproduction with an R101x3
teacher (98.2%) reached 81.0% after only 1,000 epochs. Watch also
`dist_test/t1_agree_top1` (how often the student agrees with the teacher).
Logs: WORKDIR/metrics.jsonl and TensorBoard files in WORKDIR.
"""

from configs import common

# PAPER_NOTES "Released settings": epochs, lr, weight decay, temperature.
VARIANTS = dict(
    fast=dict(epochs=10_000, lr=0.003, wd=3e-4, t=10.0),
    medium=dict(epochs=100_000, lr=0.001, wd=1e-4, t=1.0),
    long=dict(epochs=1_000_000, lr=0.0003, wd=1e-5, t=1.0),
)


def get_config(arg=None):
  return common.distill_small("flowers", VARIANTS, arg)
