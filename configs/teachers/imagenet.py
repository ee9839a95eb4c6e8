r"""ImageNet teachers: BiT-M R152x2 fine-tuned at 224px or 384px (`:res=`).

The two teachers of configs/imagenet_r50.py (t1 at 224px, t2 at 384px). From
the repository root, after downloading the public BiT-M checkpoint:

    wget https://storage.googleapis.com/bit_models/BiT-M-R152x2.npz
    python -m big_distill.train --config=configs/teachers/imagenet.py:res=224 \
        --workdir=$PWD/workdirs/teachers/imagenet_r152x2_224
    python -m big_distill.train --config=configs/teachers/imagenet.py:res=384 \
        --workdir=$PWD/workdirs/teachers/imagenet_r152x2_384

The runs write the student.npz files that configs/imagenet_r50.py reads as
`t1_init` and `t2_init`. The BiT-M file is `config.student_init` (a path or a
gs:// URL); its 21,843-class head is replaced by a zero head for 1,000
classes. BiT-HyperRule for more than 500k images: 20,000 steps of batch 512
(~8 epochs), warm-up 500, mixup 0.1. Training crop: an inception crop at
224px (the paper's 224px teacher was trained so, "ic224"), a random 384px
crop of the image resized to 439x439 at 384px. `:runlocal` trains a tiny R26
from scratch for 3 steps into workdirs/teachers/imagenet_local_<res>.

Run time, estimates scaled from the distillation timings by FLOPs: ~8 h at
224px and ~1 day at 384px on a TPU v2-8 (R152x2 at 384px with 64 images a
core may need a v3 or --config.remat_student=True for memory). Expected
accuracy: the paper's teachers reached 83.0% (224px) and 84.3% (384px) top-1
(`val/student_top1`: the model trained here is this run's "student").
Logs: WORKDIR/metrics.jsonl.
"""

from configs import common


def get_config(arg=None):
  return common.finetune_teacher("imagenet", arg, resolutions=(224, 384),
                                 inception_crop_at=(224,))
