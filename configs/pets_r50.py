r"""Oxford-IIIT Pets: function matching from BiT-M R152x2 (128px) into BiT R50x1 (128px).

Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent" (CVPR 2022), with the released settings for Pets (the paper's
Section 3 and Table 4; the big_vision release's settings). Trains on
train[:90%] (3,312 images); train[90%:] is the validation set and TFDS 'test'
the test set. From the repository root (`variant` = fast | medium | long):

    python -m big_distill.train --config=configs/pets_r50.py:variant=fast

The run goes to workdirs/pets_r50_variant_fast (or `--workdir=DIR`). The
teacher is the paper's own, released as
gs://bit_models/distill/R152x2_T_pet128.npz (`config.t1_init`, read through
tf.io.gfile; test top-1 91.03%, Table 4). Where gs:// cannot be read, copy it
first:

    gsutil cp gs://bit_models/distill/R152x2_T_pet128.npz DIR/
    python -m big_distill.train --config=configs/pets_r50.py:variant=fast \
        --config.t1_init=DIR/R152x2_T_pet128.npz

It was trained with big_vision's `bit_paper` model, whose stem max-pool pads
with -inf: hence `stem_pool_pad="neg_inf"` in `config.t1`. Which padding its
fine-tuning used is not published; check it with the teacher alone, once per
setting (the right one gives 91.03% as `test/t1_top1`):

    python -m big_distill.evaluate --config=configs/pets_r50.py \
        --config.t1_init=DIR/R152x2_T_pet128.npz --config.t1.stem_pool_pad=zeros  # or neg_inf

To distill a teacher of one's own instead, fine-tune it with
configs/teachers/pets.py and pass its workdir (or student.npz) as
`--config.t1_init=`, with `--config.t1.stem_pool_pad=zeros` (BiT's padding,
which that fine-tuning keeps). Try everything on a laptop first (tiny models,
3 steps; big_distill/configs/common.py):

    python -m big_distill.train --config=configs/teachers/pets.py:runlocal \
        --workdir=$PWD/workdirs/teachers/pets_local
    python -m big_distill.train --config=configs/pets_r50.py:runlocal

Run time (batch 512, ~6.5 steps per epoch): the paper reports ~28 minutes on a
TPU v2-8 for `fast` (6,469 steps). Estimates scaled by the number of images:
`medium` (19,407 steps) ~1.5 h, `long` (194,063 steps) ~14 h on a v2-8; the
reference release reports ~11 h for `long` on a v2-8.

The paper's fixed-teacher baselines (Section 3.1.1) replace function matching
with `:fixed=rs|cc|ic_ens` (big_distill/configs/common.py FIXED has each one's views).
Before training, one pass computes the teacher's outputs per image (ic_ens:
1,000 teacher forwards per image) into WORKDIR/teacher_outputs.npz; a rerun
reads them back.

Expected accuracy (test top-1, Table 4): the released teacher 91.03%
(`test/t1_top1`, logged at every eval); the student (`test/student_top1`)
88.01% after 1,000 epochs (`fast`), 90.08% after 3,000 (`medium`), 90.98%
after 10,000 and 91.06% after 30,000 (`long`), level with the teacher. Watch
also `dist_test/t1_agree_top1` (how often the student agrees with the
teacher). Logs: WORKDIR/metrics.jsonl and TensorBoard files in WORKDIR.
"""

from big_distill import config_lib
from big_distill.configs import recipes

# The released settings (big_vision configs/proj/distill/README.md; the paper's
# Section 3.2): epochs, learning rate, weight decay, temperature.
VARIANTS = dict(  # epochs, lr, wd, t
    fast=(1_000, 0.01, 1e-3, 5.0),
    medium=(3_000, 0.003, 3e-4, 10.0),
    long=(30_000, 0.003, 1e-5, 2.0),
)

# Data: train[:90%] (3,312 images); train[90%:] validates, TFDS 'test' tests;
# decoded once and kept as pixels in host memory (~2 GB: several times the
# examples/s of "encoded"; docs/performance.md).
CACHE = "decoded"
EVAL_CACHE_RAW = True
TEACHER = "gs://bit_models/distill/R152x2_T_pet128.npz"


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="fast", runlocal=False, student="bit", fixed="", images="pets")
  # The recipe (big_distill/configs/recipes.py): function matching with
  # consistent views and mixup, KL at the variant's temperature, Adam, warm-up
  # then cosine decay; `:fixed=rs|cc|ic_ens` the fixed-teacher baselines
  # instead; `:runlocal` tiny models for 3 steps, from
  # configs/teachers/pets.py:runlocal's teacher.
  return recipes.small_data_distill(
      "pets", arg, variants=VARIANTS, cache=CACHE, eval_cache_raw=EVAL_CACHE_RAW,
      teacher=TEACHER,
      other_images=("food101", "imagenet"))
