r"""SUN397: function matching from BiT-M R152x2 (128px) into BiT R50x1 (128px).

Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent" (CVPR 2022), with the released settings for SUN397
(PAPER_NOTES.md). TFDS `sun397` (its default config, 'tfds') has its own
train (76,128), validation (10,875) and test (21,750) splits, used as they
are. From the repository root, fine-tune the teacher once, then distill
(`variant` = fast | medium | long):

    python -m big_distill.train --config=configs/teachers/sun397.py \
        --workdir=$PWD/workdirs/teachers/sun397_r152x2
    python -m big_distill.train --config=configs/sun397_r50.py:variant=fast \
        --workdir=$PWD/workdirs/sun397_fast

The teacher is `config.t1_init` (default
workdirs/teachers/sun397_r152x2/student.npz, written by the first command;
`--config.t1_init=PATH_OR_GS_URL` to change it). The paper's own teacher was
released as gs://bit_models/distill/R152x2_T_sun128.npz; it may be stored in
big_vision's parameter layout rather than BiT's (untested here). The encoded
training images are cached in host memory. Laptop check, tiny models and 3
steps (configs/common.py):

    python -m big_distill.train --config=configs/teachers/sun397.py:runlocal \
        --workdir=$PWD/workdirs/teachers/sun397_local
    python -m big_distill.train --config=configs/sun397_r50.py:runlocal \
        --workdir=$PWD/workdirs/sun397_local

Distilling on another data set's images (paper Section 3.8, Fig. 6):
`:images=food101` or `:images=imagenet2012` trains on that data set's
training images only (their labels ignored), evaluates on SUN397 as
always, for the same number of steps as the in-domain variant (e.g.
`:variant=fast,images=food101`); the paper finds in-domain images best,
unrelated ones (Food101) working to some extent, related ones (ImageNet)
nearly as well with a longer schedule. `:student=mobilenet_v3`: a MobileNet
v3 Large (GroupNorm) student instead of R50x1 (paper Section 3.6).

Run time (batch 512, ~149 steps per epoch), estimates scaled by the number
of images from the paper's Flowers and Pets timings on a TPU v2-8: `fast`
(14,869 steps) ~1 h, `medium` (148,688 steps) ~10 h, `long` (446,063 steps)
~1.2 days on a v2-8.

Expected accuracy: the student's test top-1 (`test/student_top1`) approaches
the teacher's (`test/t1_top1`) with longer schedules (paper Fig. 3);
PAPER_NOTES records no SUN397 number, so the teacher's line is the
reference. Logs: WORKDIR/metrics.jsonl and TensorBoard files in WORKDIR.
"""

from configs import common

# PAPER_NOTES "Released settings": epochs, lr, weight decay, temperature.
VARIANTS = dict(
    fast=dict(epochs=100, lr=0.01, wd=1e-3, t=10.0),
    medium=dict(epochs=1_000, lr=0.001, wd=1e-4, t=10.0),
    long=dict(epochs=3_000, lr=0.01, wd=3e-5, t=10.0),
)


def get_config(arg=None):
  return common.distill_small("sun397", VARIANTS, arg,
                              image_sources=("food101", "imagenet2012"))
