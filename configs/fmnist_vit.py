r"""Fashion-MNIST miniature with the ViT family: a ViT student, or a ViT teacher.

configs/fmnist_distill.py's setting, argument for argument (its 100-image
subset of train[:50000], its schedule in steps, crops, mixup, evaluators;
validation `train[50000:]` for selection, test once at the end), with a ViT
in place of one of the two BiT models (big_distill/configs/fmnist.py
VIT_STUDENT and VIT_TEACHER: patch 8 at 32px, sin-cos position embedding,
mean pooling):

  student=vit,teacher=bit  (default) the BiT R26x0.25 teacher distilled into a
               ViT of about the BiT student's parameters (width 64, depth 4,
               MLP 256, 4 heads: 213,066 against R26x0.125's 223,922)
  student=bit,teacher=vit  the ViT teacher of configs/fmnist_teacher.py:model=vit
               (width 128, depth 4, MLP 512, 4 heads: 819,338 parameters)
               distilled into the BiT R26x0.125 student of fmnist_distill.py
  student=vit,teacher=vit  both (not in docs/results.md's plan)

`config.t1_init` is the teacher's workdir (or its student.npz): the BiT
teacher's as in fmnist_distill.py, or the ViT teacher's, by default
workdirs/fmnist/vit_teacher. From the repository root:

    python -m big_distill.train --config=configs/fmnist_teacher.py:model=vit,epochs=3,lr=0.001 \
        --workdir=workdirs/fmnist/vit_teacher
    python -m big_distill.train \
        --config=configs/fmnist_vit.py:student=bit,teacher=vit,epochs=1000,lr=0.01 \
        --workdir=workdirs/fmnist/vit_to_bit
    python -m big_distill.train --config=configs/fmnist_vit.py:student=vit,epochs=1000,lr=0.01 \
        --config.t1_init=$HOME/bd_runs/fmnist/teacher_e30 --workdir=workdirs/fmnist/bit_to_vit

Every other argument is fmnist_distill.py's (arm, images, epochs, lr, seed,
runlocal, ...; `width`, `teacher_width` and `teacher_depth` size the BiT
models only). Results: docs/results.md ("ViT in the miniature"), the steps
sel_vit_teacher, sel_vit_to_bit, sel_bit_to_vit, vit_to_bit_e1000 and
bit_to_vit_e1000 of scripts/replicate_paper.py.
"""

from big_distill import errors
from big_distill.configs import fmnist

OWN = dict(student="vit", teacher="bit")


def get_config(arg=None):
  a, rest = fmnist.split_arg(arg, OWN)
  for k in OWN:
    if a[k] not in fmnist.MODELS:
      raise errors.ConfigError(f"{k}={a[k]!r}: one of {', '.join(fmnist.MODELS)}.")
  c = fmnist.distill(rest)  # configs/fmnist_distill.py's config.
  if a.student == "vit":
    c.student_name = "vit"
    c.student = dict(fmnist.VIT_STUDENT)
  if a.teacher == "vit" and c.teachers:  # The supervised arm has no teacher.
    c.t1_name = "vit"
    c.t1 = dict(fmnist.VIT_TEACHER)
    c.t1_init = "workdirs/fmnist/vit_teacher"
  return c
