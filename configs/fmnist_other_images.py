r"""Fashion-MNIST miniature of "distilling on another data set's images" (Section 3.8).

The Fashion-MNIST teacher is distilled using only images of another data set,
and evaluated on Fashion-MNIST's validation (`train[50000:]`, for choosing lr)
and test sets (once, at the end): configs/fmnist_distill.py's setting in
everything else (student, schedule in steps, crops, mixup, evaluators), so
the result sits beside the in-domain student of the same budget.

  source=digits   scikit-learn's handwritten digits (TFDS `sklearn_digits`,
                  `python -m big_distill.data.prepare digits`): 8x8 grey,
                  17 levels, upscaled to 32px RGB by the same preprocessing as
                  Fashion-MNIST's 28px images. An unrelated domain, shipped
                  offline. `images=N`: N of them, class-balanced as the
                  in-domain subset is (the digit labels pick the subset and
                  are otherwise ignored), so the student sees as many
                  distinct images for as many steps as the in-domain one.
  source=fmnist_other
                  the "related" case: Fashion-MNIST images of other classes
                  only. The classes are split once, by label parity, fixed
                  before any run: the student trains on images of the odd
                  classes (trouser, dress, sandal, sneaker, ankle boot;
                  `images=N`: N/5 of each, from `train[:50000]`) and never
                  sees one of the held-out even classes (T-shirt, pullover,
                  coat, shirt, bag). Evaluated on all ten classes as every
                  other row, and also on the held-out classes' test images
                  alone (`test_heldout`, at the last step).

With `source=digits` the digits' labels are never used: the training data are not the task's
(their name is not the evaluators'), so the trainer logs that their labels
are ignored and computes no label loss. The distance evaluator on the
training subset (`train_dist`) measures the fit to the teacher on the digits
the student trained on.

    python -m big_distill.data.prepare digits
    python -m big_distill.train \
        --config=configs/fmnist_other_images.py:source=digits,images=100,epochs=300,lr=0.003 \
        --config.t1_init=$HOME/bd_runs/fmnist/teacher_e30 --workdir=$HOME/bd_runs/other/digits_lr0.003

Results: docs/results.md ("Issue 13's rows"), tables in docs/results/other_images/.
"""

from big_distill import errors
from big_distill.configs import fmnist

OWN = dict(source="digits")
# source -> (TFDS name, split, the classes of its images used; None: all).
HELD_OUT = (0, 2, 4, 6, 8)
SOURCES = {"digits": ("sklearn_digits", "train", None),
           "fmnist_other": ("fashion_mnist", fmnist.TRAIN_SPLIT, (1, 3, 5, 7, 9))}


def get_config(arg=None):
  a, rest = fmnist.split_arg(arg, OWN)
  if a.source not in SOURCES:
    raise errors.ConfigError(f"source={a.source!r}: one of {', '.join(SOURCES)}.")
  c = fmnist.distill(rest)  # configs/fmnist_distill.py's config.
  name, split, classes = SOURCES[a.source]
  # Same subset size, steps and pp (decode|grayscale_to_rgb|resize(32)) as the
  # in-domain student; only the images change.
  # The images trained on, and the evaluator of the fit to the teacher on
  # them (the one on the training subset); `data_dir` (fmnist_distill's
  # argument) is where both data sets are prepared.
  on_training_images = [e.data for e in c.evals.values() if e.data.balanced_subset]
  for d in (c.input.data, *on_training_images):
    d.name, d.split, d.classes = name, split, classes
  if classes:
    # The held-out classes' test images alone (all of them: 1,000 per class).
    # (runlocal's test split is its first 64 images: one of each held-out class.)
    test = c.evals.test.data
    e = fmnist.classification_eval(test.split, -1, test.data_dir)
    e.data.balanced_subset = len(HELD_OUT) * (1000 if test.split == "test" else 1)
    e.data.classes = HELD_OUT
    e.batch_size = c.evals.test.batch_size
    c.evals.test_heldout = e
  return c
