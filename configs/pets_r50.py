r"""Oxford-IIIT Pets: function matching from BiT-M R152x2 (128px) into BiT R50x1 (128px).

Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent" (CVPR 2022), with the released settings for Pets (PAPER_NOTES.md).
Trains on train[:90%] (3,312 images); train[90%:] is the validation set and
TFDS 'test' the test set. From the repository root, fine-tune the teacher
once, then distill (`variant` = fast | medium | long):

    python -m big_distill.train --config=configs/teachers/pets.py \
        --workdir=$PWD/workdirs/teachers/pets_r152x2
    python -m big_distill.train --config=configs/pets_r50.py:variant=fast \
        --workdir=$PWD/workdirs/pets_fast

The teacher is `config.t1_init` (default
workdirs/teachers/pets_r152x2/student.npz, written by the first command;
`--config.t1_init=PATH_OR_GS_URL` to change it). The paper's own teacher was
released as gs://bit_models/distill/R152x2_T_pet128.npz; it may be stored in
big_vision's parameter layout rather than BiT's (untested here). Laptop check,
tiny models and 3 steps (configs/common.py):

    python -m big_distill.train --config=configs/teachers/pets.py:runlocal \
        --workdir=$PWD/workdirs/teachers/pets_local
    python -m big_distill.train --config=configs/pets_r50.py:runlocal \
        --workdir=$PWD/workdirs/pets_local

Distilling on another data set's images (paper Section 3.8, Fig. 6):
`:images=food101` or `:images=imagenet2012` trains on that data set's
training images only (their labels ignored), evaluates on Pets as
always, for the same number of steps as the in-domain variant (e.g.
`:variant=fast,images=food101`); the paper finds in-domain images best,
unrelated ones (Food101) working to some extent, related ones (ImageNet)
nearly as well with a longer schedule. `:student=mobilenet_v3`: a MobileNet
v3 Large (GroupNorm) student instead of R50x1 (paper Section 3.6).

Run time (batch 512, ~6.5 steps per epoch): the paper reports ~28 minutes on
a TPU v2-8 for `fast` (6,469 steps). Estimates scaled by the number of
images: `medium` (19,407 steps) ~1.5 h, `long` (194,063 steps) ~14 h on a
v2-8; the reference release reports ~11 h for `long` on a v2-8.

Expected accuracy: the student's test top-1 (`test/student_top1`) rises
towards the teacher's (`test/t1_top1`) with longer schedules; the paper's
curves (Fig. 3) keep improving up to `long`. For scale, a public Keras
reproduction with an R101x3 teacher (90.9%) reached 86.0% after 1,000 epochs
(= `fast`). Logs: WORKDIR/metrics.jsonl and TensorBoard files in WORKDIR.
"""

from configs import common

# PAPER_NOTES "Released settings": epochs, lr, weight decay, temperature.
VARIANTS = dict(
    fast=dict(epochs=1_000, lr=0.01, wd=1e-3, t=5.0),
    medium=dict(epochs=3_000, lr=0.003, wd=3e-4, t=10.0),
    long=dict(epochs=30_000, lr=0.003, wd=1e-5, t=2.0),
)


def get_config(arg=None):
  return common.distill_small("pets", VARIANTS, arg,
                              image_sources=("food101", "imagenet2012"))
