r"""Food-101: function matching from BiT-M R152x2 (128px) into BiT R50x1 (128px).

Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent" (CVPR 2022), with the released settings for Food-101 (the paper's
Section 3 and Table 4; the big_vision release's settings). Trains on
train[:90%] (68,175 images, cached in host memory: about 5 GB); train[90%:]
(7,575) is the validation set for choosing settings, and TFDS 'validation'
(25,250, Food-101's official test set) the test set. From the repository root
(`variant` = fast | medium | long):

    python -m big_distill.train --config=configs/food101_r50.py:variant=fast

The run goes to workdirs/food101_r50_variant_fast (or `--workdir=DIR`). The
teacher is the paper's own, released as
gs://bit_models/distill/R152x2_T_food128.npz (`config.t1_init`, read through
tf.io.gfile; test top-1 86.24%, Table 4). Where gs:// cannot be read, copy it
first:

    gsutil cp gs://bit_models/distill/R152x2_T_food128.npz DIR/
    python -m big_distill.train --config=configs/food101_r50.py:variant=fast \
        --config.t1_init=DIR/R152x2_T_food128.npz

It was trained with big_vision's `bit_paper` model, whose stem max-pool pads
with -inf: hence `stem_pool_pad="neg_inf"` in `config.t1`. Which padding its
fine-tuning used is not published; check it with the teacher alone, once per
setting (the right one gives 86.24% as `test/t1_top1`):

    python -m big_distill.evaluate --config=configs/food101_r50.py \
        --config.t1_init=DIR/R152x2_T_food128.npz --config.t1.stem_pool_pad=zeros  # or neg_inf

To distill a teacher of one's own instead, fine-tune it with
configs/teachers/food101.py and pass its workdir (or student.npz) as
`--config.t1_init=`, with `--config.t1.stem_pool_pad=zeros` (BiT's padding,
which that fine-tuning keeps). Try everything on a laptop first (tiny models,
3 steps; big_distill/configs/common.py):

    python -m big_distill.train --config=configs/teachers/food101.py:runlocal \
        --workdir=$PWD/workdirs/teachers/food101_local
    python -m big_distill.train --config=configs/food101_r50.py:runlocal

Run time (batch 512, ~133 steps per epoch), estimates scaled by the number of
images from the paper's Flowers and Pets timings on a TPU v2-8: `fast` (13,316
steps) ~50 minutes (the reference release reports ~45 minutes on a v2-8),
`medium` (133,155 steps) ~8 h, `long` (399,463 steps) ~1 day on a v2-8 (the
reference release reports ~14 h on a v3-8).

The paper's fixed-teacher baselines (Section 3.1.1) replace function matching
with `:fixed=rs|cc|ic_ens` (big_distill/configs/common.py FIXED has each one's views).
Before training, one pass computes the teacher's outputs per image (ic_ens:
1,000 teacher forwards per image) into WORKDIR/teacher_outputs.npz; a rerun
reads them back.

Expected accuracy (test top-1, Table 4): the released teacher 86.24%
(`test/t1_top1`, logged at every eval); the student (`test/student_top1`)
83.29% after 100 epochs (`fast`), 86.64% after 1,000 (`medium`) and 87.20%
after 3,000 (`long`), above its teacher. Watch also `dist_test/t1_agree_top1`
(how often the student agrees with the teacher). Logs: WORKDIR/metrics.jsonl
and TensorBoard files in WORKDIR.
"""

from big_distill import config_lib
from big_distill.configs import recipes

# The released settings (big_vision configs/proj/distill/README.md; the paper's
# Section 3.2): epochs, learning rate, weight decay, temperature.
VARIANTS = dict(  # epochs, lr, wd, t
    fast=(100, 0.01, 1e-3, 10.0),
    medium=(1_000, 0.001, 3e-4, 10.0),
    long=(3_000, 0.01, 1e-4, 5.0),
)

# Data: train[:90%] (68,175 images; ~5 GB cached, encoded); train[90%:]
# validates, TFDS 'validation' (the official test set) tests.
CACHE = "encoded"
EVAL_CACHE_RAW = False
TEACHER = "gs://bit_models/distill/R152x2_T_food128.npz"


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="fast", runlocal=False, student="bit", fixed="")
  # The recipe (big_distill/configs/recipes.py): function matching with
  # consistent views and mixup, KL at the variant's temperature, Adam, warm-up
  # then cosine decay; `:fixed=rs|cc|ic_ens` the fixed-teacher baselines
  # instead; `:runlocal` tiny models for 3 steps, from
  # configs/teachers/food101.py:runlocal's teacher.
  return recipes.small_data_distill(
      "food101", arg, variants=VARIANTS, cache=CACHE, eval_cache_raw=EVAL_CACHE_RAW,
      teacher=TEACHER)
