r"""Food-101: function matching from BiT-M R152x2 (128px) into BiT R50x1 (128px).

Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent" (CVPR 2022), with the released settings for Food-101
(PAPER_NOTES.md). Trains on train[:90%] (68,175 images); train[90%:] (7,575)
is the validation set for choosing settings, and TFDS 'validation' (25,250,
Food-101's official test set) the test set. From the repository root,
fine-tune the teacher once, then distill (`variant` = fast | medium | long):

    python -m big_distill.train --config=configs/teachers/food101.py \
        --workdir=$PWD/workdirs/teachers/food101_r152x2
    python -m big_distill.train --config=configs/food101_r50.py:variant=fast \
        --workdir=$PWD/workdirs/food101_fast

The teacher is `config.t1_init` (default
workdirs/teachers/food101_r152x2/student.npz, written by the first command;
`--config.t1_init=PATH_OR_GS_URL` to change it). The paper's own teacher was
released as gs://bit_models/distill/R152x2_T_food128.npz; it may be stored in
big_vision's parameter layout rather than BiT's (untested here). The encoded
training images are cached in host memory (about 5 GB). Laptop check, tiny
models and 3 steps (configs/common.py):

    python -m big_distill.train --config=configs/teachers/food101.py:runlocal \
        --workdir=$PWD/workdirs/teachers/food101_local
    python -m big_distill.train --config=configs/food101_r50.py:runlocal \
        --workdir=$PWD/workdirs/food101_local

Run time (batch 512, ~133 steps per epoch), estimates scaled by the number
of images from the paper's Flowers and Pets timings on a TPU v2-8: `fast`
(13,316 steps) ~50 minutes (the reference release reports ~45 minutes on a
v2-8), `medium` (133,155 steps) ~8 h, `long` (399,463 steps) ~1 day on a
v2-8 (the reference release reports ~14 h on a v3-8).

Expected accuracy: the student's test top-1 (`test/student_top1`) approaches
the teacher's (`test/t1_top1`) with longer schedules (paper Fig. 3). For
scale, a public Keras reproduction with an R101x3 teacher (85.5%) reached
76.1% after 100 epochs (= `fast`). Logs: WORKDIR/metrics.jsonl.

The paper's fixed-teacher baselines (Section 3.1.1) replace function matching
with `:fixed=rs|cc|ic_ens`, e.g. `--config=configs/food101_r50.py:variant=fast,fixed=cc`
(FIXED below has each one's views). Before training, one pass computes the
teacher's outputs per image (ic_ens: 1,000 teacher forwards per image, as
many as 1,000 epochs of function matching make) into
WORKDIR/teacher_outputs.npz; a rerun reads them back.
"""

from configs import common

# PAPER_NOTES "Released settings": epochs, lr, weight decay, temperature.
VARIANTS = dict(
    fast=dict(epochs=100, lr=0.01, wd=1e-3, t=10.0),
    medium=dict(epochs=1_000, lr=0.001, wd=3e-4, t=10.0),
    long=dict(epochs=3_000, lr=0.01, wd=1e-4, t=5.0),
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
  return common.distill_small("food101", VARIANTS, arg, fixed=FIXED)
