r"""Fashion-MNIST student: the paper's small-data setting (Flowers102) in miniature.

A BiT R26x0.125 student (~4x fewer FLOPs than the teacher) learns from the
R26x0.25 teacher of configs/fmnist_teacher.py on a fixed, class-balanced
subset of the teacher's own training split `train[:50000]`: 10 images per
class (`images=100`, Flowers102's 10 per class) or 102 per class
(`images=1020`, Flowers102's size), or all 50,000 (`images=50000`, claim 11
of docs/results.md: is the gap left the data's or the student's). Selection
looks only at validation
(`train[50000:]`, seen by no model); test is read once, at the last step.

    python -m big_distill.train --config=configs/fmnist_distill.py:arm=funmatch,epochs=1000 \
        --config.t1_init=$HOME/bd_runs/fmnist/teacher_e30 --workdir=$HOME/bd_runs/fm_e1000

The arms (`:arm=...`), in the paper's names (Section 3.1, PAPER_NOTES.md):
  supervised   no teacher: labels, same crops; mixup selectable (`mixup=0|1`)
  fix_rs       `fix/rs`: both models see the whole image resized; the teacher's
               outputs computed once before training
  fix_ic_ens   `fix/ic_ens`: the teacher's prediction averaged over 1,000
               inception crops (computed once); the student on inception crops
  shampoo_paper  funmatch with the paper's Shampoo (SGD grafting, Nesterov)
  fixed        the teacher sees the whole image resized (its prediction is a
               constant per image, precomputable), the student random
               inception crops. That is the paper's `fix/cc` idea (a fixed
               teacher view, random student crops); its fixed view is the
               resize of `fix/rs`, because Fashion-MNIST's 28px items fill
               the frame and a central crop would cut them.
  independent  `ind/ic`: teacher and student each their own inception crop
  consistent   `same/ic`: one shared inception crop, no mixup
  funmatch     function matching: one shared inception crop + mixup (default)
  shampoo      funmatch with Shampoo instead of Adam (config.optim.shampoo_*)
  lowres       funmatch with the student at 24px (a resize of the 32px view
               the teacher sees)
Other arguments: epochs (passes over the subset), lr (0: 0.003), mixup (-1:
the arm's own: on for supervised/funmatch/shampoo/lowres), loss ('kl', or
'hard': the teacher's top-1 as the label, for the calibration claim), seed
(model init, data order, crops and mixup: paired across arms), crop (the
inception crop's smallest area in %, 5 = the paper's), evals (validation
evaluations per run), t (temperature), width/teacher_width/teacher_depth,
batch, wd, data_dir, runlocal (a few steps, for tests).

Metrics: `val/*` (classification on train[50000:], `evals` times per run),
`train_dist/t1_kl` (KL to the teacher on the clean training images, at the
same times), `train/t1_loss` (the objective, on the views it trains on);
at the last step only: `test/*`, `test_dist/t1_agree_top1`, `test_dist/t1_kl`
and `test_cal/student_ece`. Time on 2 shared CPU cores: ~500-1000 training
images/s plus ~30 s of start-up (docs/results.md has the measured table).
"""

from big_distill.configs import fmnist


def get_config(arg=None):
  # The recipe is big_distill/configs/fmnist.py's distill(), which
  # configs/fmnist_mobilenet.py and configs/fmnist_other_images.py build on.
  return fmnist.distill(arg)
