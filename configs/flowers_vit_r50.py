r"""Flowers102: function matching from a fine-tuned ViT-B/16 (128px) into BiT R50x1 (128px).

configs/flowers_r50.py's recipe, argument for argument (`variant=fast|medium|long`,
`student=`, `fixed=`, `runlocal`: data, consistent views, mixup, KL at
the variant's temperature, Adam, schedule, evaluators), with a ViT teacher
of one's own in place of the paper's BiT-M R152x2: `:teacher=siglip_b16`
(default) or `:teacher=deit3_b16`, fine-tuned on Flowers102 at 128px by
configs/teachers/vit.py. From the repository root, first the teacher, then
the distillation:

    python -m big_distill.train --config=configs/teachers/vit.py:model=siglip_b16,data=flowers \
        --workdir=$PWD/workdirs/teachers/flowers_vit_siglip_b16
    python -m big_distill.train --config=configs/flowers_vit_r50.py:teacher=siglip_b16,variant=fast

`config.t1_init` is that teacher's workdir/student.npz (relative to the
repository root; `--config.t1_init=PATH` for another). The teacher is loaded
with its head checked (102 classes), frozen, cast to bfloat16 once.
On a laptop first (tiny models, 3 steps, no download):

    python -m big_distill.train --config=configs/teachers/vit.py:runlocal \
        --workdir=$PWD/workdirs/teachers/flowers_vit_siglip_b16_local
    python -m big_distill.train --config=configs/flowers_vit_r50.py:runlocal

Run time: an estimate (not measured), at most configs/flowers_r50.py's
(~1h10m on a TPU v2-8 for `fast`, the paper's figure): the same student
steps, and a cheaper teacher. Per step of 512 images (XLA's count before
optimization, `python -m big_distill.benchmark --config=... --flops_only
--lowered_only`): the ViT-B/16 teacher's forward is 5.8 TFLOPs against
R152x2's 14.3, the student's forward and backward 3.9 in both.

Expected accuracy: none is published for a ViT teacher in this recipe.
The paper's BiT teacher (97.82% test top-1) gave a student of 92.83% after
`fast`, 96.93% after `long` (Table 4); compare `test/t1_top1` with that
teacher's, and `test/student_top1` with those rows.
"""

import os

from big_distill import config_lib
from big_distill.configs import common


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, teacher="siglip_b16", variant="fast", runlocal=False,
                             student="bit", fixed="")
  kwargs, _ = common.vit_teacher(arg.teacher, arg.runlocal)
  # configs/flowers_r50.py with the same arguments (runlocal shrinks its
  # models: its teacher is replaced below, at runlocal size too).
  flowers_r50 = config_lib.load_config_module(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "flowers_r50.py"))
  c = flowers_r50.get_config(",".join(
      [f"variant={arg.variant}", f"student={arg.student}", f"fixed={arg.fixed}"]
      + (["runlocal"] if arg.runlocal else [])))
  c.t1_name = "vit"
  c.t1 = kwargs  # Fine-tuned at the student's resolution: c.t1_res stays flowers_r50's.
  c.t1_init = os.path.join(
      common.vit_teacher_workdir("flowers", arg.teacher, arg.runlocal), "student.npz")
  return c
