r"""ViT teachers of one's own: a zoo ViT fine-tuned on Flowers102 or Pets at 128px.

`:model=siglip_b16` (the SigLIP B/16 224 image tower, big_vision's
`SigLIP B/16 224`) or `:model=deit3_b16` (DeiT-3 B/16, ImageNet-21k then 1k,
`deit3_B_224_21k`); `:data=flowers` or `:data=pets`. From the repository root:

    python -m big_distill.train --config=configs/teachers/vit.py:model=siglip_b16,data=flowers \
        --workdir=$PWD/workdirs/teachers/flowers_vit_siglip_b16

The run's student.npz (big_vision's ViT layout) is the teacher that
configs/flowers_vit_r50.py:teacher=siglip_b16 distills (its default
`t1_init` is that workdir's student.npz). The zoo file is
`config.student_init`, read from gs:// (the SigLIP one through the
`file.npz:img` suffix: its image tower). Where gs:// cannot be read, copy it
and pass the copy:

    gsutil cp gs://big_vision/siglip/webli_en_b16_224_63724782.npz DIR/
    python -m big_distill.train --config=configs/teachers/vit.py:model=siglip_b16,data=flowers \
        --config.student_init=DIR/webli_en_b16_224_63724782.npz:img --workdir=...

The new head (102 or 37 classes) starts at zero: the trainer loads the file
with head_mismatch="reinit" (SigLIP's tower has no head; DeiT-3's has
ImageNet's 1,000 classes). The position embedding is resampled from the
zoo's 14x14 grid to 128px's 8x8 at load, as big_vision does for
fine-tuning at another resolution.

The recipe is configs/teachers/{flowers,pets}.py's (the BiT teachers':
the same data, 128px crops, evaluators, SGD with momentum 0.9, lr 0.003 at
batch 512, 500 steps, warm-up 100, no weight decay, no mixup), at the
teachers' resolution (128px, the distillation's), with the ViT paper's
fine-tuning changes (Dosovitskiy et al. 2021, Appendix B.1.1: gradient
clipping at global norm 1, cosine decay; 500 steps for Pets and Flowers).
The lr was not tuned here (that paper searches 0.001-0.03).

`:runlocal`: a tiny ViT from scratch (no download; big_distill/configs/
common.py LOCAL_VIT), 3 steps, into
workdirs/teachers/flowers_vit_siglip_b16_local (with data=flowers), the
teacher of `configs/flowers_vit_r50.py:runlocal`:

    python -m big_distill.train --config=configs/teachers/vit.py:runlocal \
        --workdir=$PWD/workdirs/teachers/flowers_vit_siglip_b16_local

Run time: an estimate (not measured) of about 10 minutes on one current
accelerator: 500 steps of 512 images through ViT-B/16 at 128px (64 tokens)
is ~10 PFLOPs of training; start-up and compilation are most of it.
Expected accuracy: none is published for these models fine-tuned at 128px
for 500 steps; compare `test/student_top1` (the model trained here is
this run's "student") with the BiT teachers' (configs/teachers/flowers.py).
Logs: WORKDIR/metrics.jsonl.
"""

import os

from big_distill import config_lib
from big_distill import errors
from big_distill.configs import common

DATA = ("flowers", "pets")


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, model="siglip_b16", data="flowers", runlocal=False)
  if arg.data not in DATA:
    raise errors.ConfigError(f"data={arg.data!r}: one of {', '.join(DATA)}.")
  kwargs, path = common.vit_teacher(arg.model, arg.runlocal)
  # The BiT teacher config of the data set (its data, crops, evaluators,
  # optimizer and schedule; :runlocal shrinks them), with the ViT in place of
  # BiT-M.
  bit_teacher = config_lib.load_config_module(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{arg.data}.py"))
  c = bit_teacher.get_config("runlocal" if arg.runlocal else "")
  c.student_name = "vit"
  c.student = kwargs
  c.student_init = path  # None with runlocal: from scratch.
  c.grad_clip_norm = 1.0
  c.schedule.decay_type = "cosine"
  return c
