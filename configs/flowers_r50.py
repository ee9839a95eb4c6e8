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

The paper's fixed-teacher baselines (Section 3.1.1) replace function matching
with `:fixed=rs|cc|ic_ens`, e.g. `--config=configs/flowers_r50.py:variant=fast,fixed=cc`
(FIXED below has each one's views). Before training, one pass computes the
teacher's outputs per image (ic_ens: 1,000 teacher forwards per image, as
many as 1,000 epochs of function matching make) into
WORKDIR/teacher_outputs.npz; a rerun reads them back.
"""

from configs import common

# PAPER_NOTES "Released settings": epochs, lr, weight decay, temperature.
VARIANTS = dict(
    fast=dict(epochs=10_000, lr=0.003, wd=3e-4, t=10.0),
    medium=dict(epochs=100_000, lr=0.001, wd=1e-4, t=1.0),
    long=dict(epochs=1_000_000, lr=0.0003, wd=1e-5, t=1.0),
)


# The paper's fixed teachers (Section 3.1.1), `:fixed=rs|cc|ic_ens`: each one's
# pp strings ({r}: the 128px crop, {s}: the 160px short side it is cut from).
# The teacher's outputs are computed once before training and reused; no mixup.
FIXED = dict(
    # fix/rs: the whole image resized, for the teacher and the student alike.
    rs=dict(pp_fixed="resize({r})"),
    # fix/cc: the teacher on the central crop (its evaluation view); the
    # student on mild random crops of the image resized on its short side.
    cc=dict(pp_fixed="resize_small({s})|central_crop({r})",
            pp_random="resize_small({s})|random_crop({r})|flip_lr"),
    # fix/ic_ens: the teacher's prediction is its probabilities averaged over
    # 1,000 inception crops (and flips) of the image; the student on random
    # inception crops.
    ic_ens=dict(pp_random="inception_crop({r})|flip_lr", ensemble_crops=1000),
)


def get_config(arg=None):
  return common.distill_small("flowers", VARIANTS, arg, fixed=FIXED)
