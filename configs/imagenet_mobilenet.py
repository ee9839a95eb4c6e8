r"""ImageNet: function matching from BiT R152x2 teacher(s) into MobileNet v3.

Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent" (CVPR 2022), Section 3.6 and Table 3: MobileNet v3 students with
GroupNorm (8 groups) instead of BatchNorm "for most experiments", none of
MobileNet's usual training tricks, distilled from the paper's R152x2 teacher
at 224px, or from the ensemble of its 224px and 384px teachers. Every model
sees the same inception crop (each resized to its own resolution), mixed up;
the student trains from scratch at 224px.

Arguments (`--config=configs/imagenet_mobilenet.py:ARGS`, comma-separated):
  variant=large|small  MobileNet v3 Large (default) or Small.
  norm=group|batch     GroupNorm (default, the paper's) or BatchNorm (the
                       "Large BN" row): its running averages are carried in
                       the train state (updated by every step over the
                       global batch, checkpointed, exported in student.npz
                       under batch_stats/) and used by every evaluation.
  ensemble             Two teachers, 224px (t1) and 384px (t2), their KLs
                       summed (distilling from their probability-space mean).
  runlocal             Tiny models, 56px, 3 steps: a laptop check.

    python -m big_distill.train --config=configs/imagenet_mobilenet.py \
        --workdir=$PWD/workdirs/imagenet_mnv3_large_gn
    python -m big_distill.train --config=configs/imagenet_mobilenet.py:variant=small \
        --workdir=$PWD/workdirs/imagenet_mnv3_small_gn
    python -m big_distill.train --config=configs/imagenet_mobilenet.py:ensemble \
        --workdir=$PWD/workdirs/imagenet_mnv3_large_gn_ens
    python -m big_distill.train --config=configs/imagenet_mobilenet.py:norm=batch \
        --workdir=$PWD/workdirs/imagenet_mnv3_large_bn

Teachers: the paper's released ones, gs://bit_models/distill/R152x2_T_224.npz
(83.0% top-1) and R152x2_T_384.npz (84.3%), trained with big_vision, whose
BiT pads the stem max-pool with -inf (`stem_pool_pad="neg_inf"`). They are
stored in big_vision's parameter layout, which bit.load reads once issue 15
is done; until then point `--config.t1_init` (and t2_init) at BiT-layout
files, e.g. the student.npz of configs/teachers/imagenet.py runs, with
`--config.t1.stem_pool_pad=zeros` for those. Laptop check, after
`configs/teachers/imagenet.py:res=224,runlocal` (and `:res=384,runlocal` for
the ensemble) wrote the tiny teachers:

    python -m big_distill.train --config=configs/imagenet_mobilenet.py:runlocal \
        --workdir=$PWD/workdirs/imagenet_mnv3_local

Hyper-parameters: the paper gives no separate ones for MobileNet, so these are
its ImageNet distillation settings (batch 4096, Adam, lr 0.03, weight decay
3e-4, temperature 1, warm-up 5,000 steps, cosine decay), at the released
config's 1,200 epochs; Table 3 also reports 300, 4,800 and 9,600
(`--config.total_epochs=4800`).

Expected top-1 (`val/student_top1`; Table 3, 300 / 1,200 / 4,800 / 9,600
epochs): Large GN 74.60 / 76.31 / 76.84 / 76.97; Large GN from the ensemble
74.85 / 76.51 (300 / 1,200); Small GN 65.61 / 67.57 (300 / 1,200); Large BN
72.32 / 73.51 (300 / 1,200).

Run time, an estimate (not measured): the student needs ~20x fewer
multiply-adds than R50x1 (0.22G against 4.1G for a 224px image), so the R152x2
teacher's forward pass is nearly all of a step: a run costs somewhat less
than configs/imagenet_r50.py with the same teacher(s). Logs:
WORKDIR/metrics.jsonl.
"""

from big_distill import config_lib
from big_distill.errors import ConfigError
from big_distill.configs import common
from big_distill.configs import recipes

VARIANTS = ("large", "small")
NORMS = ("group", "batch")


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, variant="large", norm="group", ensemble=False,
                             runlocal=False)
  if arg.variant not in VARIANTS:
    raise ConfigError(f"configs/imagenet_mobilenet.py:variant={arg.variant}: must be one "
                      f"of {', '.join(VARIANTS)}.")
  if arg.norm not in NORMS:
    raise ConfigError(f"configs/imagenet_mobilenet.py:norm={arg.norm}: must be one of "
                      f"{', '.join(NORMS)} (group: the paper's GroupNorm).")
  local = arg.runlocal
  c = config_lib.base()

  # ---- Data (ImageNet-1k): streamed from TFDS 'train' (too large to cache).
  recipes.imagenet_input(c, batch_size=4096)  # ~30 GB of shuffle buffer per process.

  # ---- Preprocessing: one inception crop, decoded straight from the JPEG and
  # kept at its own size: each model's image is a resize of it. Evaluation:
  # one central view at the largest teacher's resolution (256 -> 224, or
  # 439 -> 384), resized down for the others: every model sees the same crop.
  teacher_res = (224, 384) if arg.ensemble else (224,)
  view = common.res(max(teacher_res), local)
  pp_eval = recipes.imagenet_shared_crop(c, view)

  # ---- Models: a MobileNet v3 student from scratch at 224px. GroupNorm with 8
  # groups: the paper's choice "for most experiments" (its BatchNorm student
  # ends lower, Table 3). One or two BiT-M R152x2 teachers (224px, 384px).
  c.student_name = "mobilenet_v3"
  c.student = dict(variant=arg.variant, width=1.0, norm=arg.norm, groups=8)
  c.student_res = common.res(224, local)
  c.student_init = None
  # The paper's teachers come from big_vision's BiT (stem pool padded with
  # -inf); runlocal's are made by configs/teachers/imagenet.py (zeros).
  recipes.paper_imagenet_teachers(c, teacher_res, local)

  # ---- Distillation, optimizer, schedule: the paper's ImageNet recipe (it
  # gives no MobileNet-specific setting): function matching, KL at t=1, Adam
  # (bfloat16 first moment), clipping at 1, 5,000 warm-up steps then cosine.
  # Evaluators: accuracy and distances on train[:10000] and validation,
  # calibration on validation, every 10 epochs (recipes.IMAGENET_DISTILL).
  recipes.imagenet_distill(c, pp_eval)

  if local:
    common.shrink_for_local(c)
    c.student = dict(common.LOCAL_MOBILENET_V3, variant=arg.variant, norm=arg.norm)
  return c
