"""What the paper configs share: the data-set table and the `runlocal` shrink.

The recipes themselves (preprocessing, models, distillation, optimizer,
schedule, evaluators) are written once in big_distill/configs/recipes.py;
each config file gives its experiment's settings and calls them. Both live in
the installed package, so that the config files, loaded by path, import them
from any working directory.

The pipeline, per data set NAME: configs/NAME_r50.py distills a BiT-M
R152x2 teacher fine-tuned on NAME into a BiT R50x1 trained from scratch. The
teacher is the paper's released one by default; configs/teachers/NAME.py
makes one's own (the run's `student.npz` is the teacher).

`:runlocal` (`shrink_for_local`) keeps the recipe but shrinks what costs:
models (BiT R26 at widths 1/8 and 1/4), batch (16), resolutions (1/4, which
each config applies to its own pp strings with `res()`), the run (3 steps)
and the evaluations (one of each type, on 16 validation examples), so that a
config runs end-to-end on a laptop CPU in about a minute. Its teachers are
`workdirs/teachers/NAME_local*/student.npz`, which the teacher configs with
`:runlocal` write, so the same two commands work at that size.
"""

from __future__ import annotations

import ml_collections as mlc

from big_distill import config_lib
from big_distill import errors

# ---- Data sets ---------------------------------------------------------------
# `tfds`: the TFDS name; `train`: the training split; `train_size`: its size in
# TFDS (which sets the teachers' BiT-HyperRule schedule); `evals`: eval split
# name -> TFDS split (`train`: a fixed part of the training split, to see how
# well the student fits it); `cache_raw`: keep the encoded training images in
# host memory (the stream is then one global sequence).
DATASETS = dict(
    flowers=dict(tfds="oxford_flowers102", num_classes=102, train="train", train_size=1020,
                 evals=dict(train="train", val="validation", test="test"), cache_raw=True),
    # Pets has no validation split: the last 10% of train is held out.
    pets=dict(tfds="oxford_iiit_pet", num_classes=37, train="train[:90%]", train_size=3312,
              evals=dict(train="train[:90%]", val="train[90%:]", test="test"),
              cache_raw=True),
    # TFDS food101 'validation' is Food-101's official test set (250 images a
    # class); the last 10% of train is held out for choosing settings, as in
    # the paper's release ("best settings were selected on a 10% minival").
    # Cached, the encoded training images take about 5 GB of host memory.
    food101=dict(tfds="food101", num_classes=101, train="train[:90%]", train_size=68175,
                 evals=dict(train="train[:4096]", val="train[90%:]", test="validation"),
                 cache_raw=True),
    # sun397 (its default TFDS config, 'tfds'): TFDS's train/validation/test.
    sun397=dict(tfds="sun397", num_classes=397, train="train", train_size=76128,
                evals=dict(train="train[:4096]", val="validation", test="test"),
                cache_raw=True),
    # ImageNet's labelled test set is its validation split (what papers report).
    imagenet=dict(tfds="imagenet2012", num_classes=1000, train="train", train_size=1281167,
                  evals=dict(train="train[:10000]", val="validation"), cache_raw=False),
)


def data(dataset: str, split: str | None = None) -> mlc.ConfigDict:
  """`config.input.data` (or an eval's data) of `dataset`: its training split by default."""
  d = config_lib.data_config()
  d.name, d.split = DATASETS[dataset]["tfds"], split or DATASETS[dataset]["train"]
  return d


def add_eval(c: mlc.ConfigDict, name: str, kind: str, dataset: str, split_name: str, *,
             pp: str, cache_raw: bool, log_epochs: float | None = None,
             log_steps: int | None = None) -> None:
  """`c.evals[name]`: an evaluator of `kind` on the split `split_name` of DATASETS."""
  ec = config_lib.eval_config()
  ec.type, ec.pp, ec.cache_raw = kind, pp, cache_raw
  ec.data = data(dataset, DATASETS[dataset]["evals"][split_name])
  ec.log_epochs, ec.log_steps = log_epochs, log_steps
  c.evals[name] = ec


# ---- Students and image sources of the small-data configs --------------------

# `:student=`: the paper's R50x1, or its MobileNet v3 Large with GroupNorm (8
# groups, none of MobileNet's usual tricks; Section 3.6, Table 3).
STUDENTS = dict(bit=dict(depth=50, width=1.0),
                mobilenet_v3=dict(variant="large", width=1.0, norm="group", groups=8))
LOCAL_MOBILENET_V3 = dict(variant="small", width=0.25, norm="group", groups=8)


def student(name: str) -> dict:
  """The model kwargs of `:student=name`."""
  if name not in STUDENTS:
    raise errors.ConfigError(f"student={name!r}: one of {', '.join(STUDENTS)}.")
  return STUDENTS[name]


def source_dataset(images: str) -> str:
  """The DATASETS key of `:images=`, given as that key or as its TFDS name."""
  by_tfds = {d["tfds"]: k for k, d in DATASETS.items()}
  return by_tfds.get(images, images)


def set_image_source(c: mlc.ConfigDict, images: str, allowed: tuple[str, ...],
                     total_steps: int) -> None:
  """Distils on another data set's images (paper Section 3.8), same step budget.

  `config.input.data` becomes `images`' training split; the evaluators stay on
  the teacher's task, so the trainer ignores the images' labels
  (setup.training_labels_are_the_tasks). The run keeps the in-domain
  schedule's number of steps (`total_steps`): the same compute, where the same
  number of "epochs" of a 20x larger source would be a 20x longer run.
  """
  images = source_dataset(images)
  if images not in allowed:
    raise errors.ConfigError(f"images={images!r}: one of {', '.join(allowed)}.")
  c.input.data = data(images)
  c.input.cache = "encoded" if DATASETS[images]["cache_raw"] else "none"
  if c.input.cache == "none":
    c.input.shuffle_buffer_size = 250_000  # Encoded JPEGs, as configs/imagenet_r50.py.
  c.total_epochs, c.total_steps = None, total_steps


# ---- The paper's fixed-teacher baselines (Section 3.1.1) -------------------------

# pp strings of each ({r}: the crop, {s}: the short side it is cut from) and any
# distill fields. The teacher's outputs depend on the image alone, so they are
# computed once before training (big_distill/precompute.py), and mixup is off.
FIXED = dict(
    # fix/rs: the whole image resized, for the teacher and the student alike.
    rs=dict(pp_fixed="resize({r})"),
    # fix/cc: the teacher on the central crop (its evaluation view); the
    # student on mild random crops of the image resized on its short side.
    cc=dict(pp_fixed="resize_small({s})|central_crop({r})",
            pp_random="resize_small({s})|random_crop({r})|flip_lr"),
    # fix/ic_ens: the teacher's prediction is its probabilities (at the
    # distillation temperature) averaged over 1,000 inception crops (and flips)
    # of the image; the student on random inception crops.
    ic_ens=dict(pp_random="inception_crop({r})|flip_lr", ensemble_crops=1000),
)


def fixed_teacher(c: mlc.ConfigDict, kind: str, *, short_side: int, runlocal: bool) -> None:
  """The fixed-teacher baseline `kind` (FIXED) in place of function matching.

  runlocal averages 4 crops for ic_ens instead of 1,000.
  """
  if kind not in FIXED:
    raise errors.ConfigError(f"Unknown fixed={kind!r}; known: {', '.join(FIXED)}.")
  fields = dict(FIXED[kind])
  for name in ("pp_fixed", "pp_random"):
    if name in fields:
      c.input[name] = fields.pop(name).format(r=c.student_res, s=short_side)
  c.distill.views = "fixed"
  c.distill.fixed = kind
  c.mixup.p = 0.0
  c.distill.update(fields)
  if runlocal and kind == "ic_ens":
    c.distill.ensemble_crops = 4


# ---- runlocal ----------------------------------------------------------------

LOCAL_TEACHER = dict(depth=26, width=0.25)
LOCAL_STUDENT = dict(depth=26, width=0.125)
LOCAL_BATCH = 16
LOCAL_STEPS = 3
LOCAL_EVAL_EXAMPLES = 16


def res(pixels: int, runlocal: bool) -> int:
  """A model's (or a pp op's) size; runlocal divides every size by 4."""
  return pixels // 4 if runlocal else pixels


def shrink_for_local(c: mlc.ConfigDict) -> None:
  """The `:runlocal` version of a finished config (sizes via `res()` aside).

  Tiny models (a distillation's student and teachers, or the model a teacher
  config fine-tunes, from scratch: there is no tiny BiT-M), batch 16 in
  float32, 3 steps, and one evaluator of each type on 16 validation examples,
  run at the end: on a CPU, compiling and starting evaluators takes most of
  the time, and the other splits would only repeat them.
  """
  c.input.batch_size = c.input.shuffle_buffer_size = LOCAL_BATCH
  c.compute_dtype = "float32"
  if c.teachers:
    c.student = LOCAL_MOBILENET_V3 if c.student_name == "mobilenet_v3" else LOCAL_STUDENT
    for t in c.teachers:
      c[t] = LOCAL_TEACHER
  else:
    c.student, c.student_init = LOCAL_TEACHER, None
  c.total_epochs, c.total_steps = None, LOCAL_STEPS
  c.schedule.warmup_steps = 1
  c.log_training_steps, c.ckpt_steps = 1, LOCAL_STEPS
  for name in list(c.evals):
    ec = c.evals[name]
    if name != "val" and not name.endswith("_val"):
      del c.evals[name]
      continue
    ec.data.split = f"{ec.data.split.partition('[')[0]}[:{LOCAL_EVAL_EXAMPLES}]"
    ec.cache_raw = False
    ec.log_epochs, ec.log_steps = None, LOCAL_STEPS


# ---- ViT teachers of one's own (configs/teachers/vit.py, configs/flowers_vit_r50.py) ----

# `:model=` -> its name in the ViT zoo (big_distill/models/vit.py ZOO: the
# file, and the Model kwargs that fit it). SigLIP B/16: the image tower of
# the 224px WebLI model (no head: fine-tuning adds one); DeiT-3 B: pre-trained
# on ImageNet-21k, fine-tuned on ImageNet-1k at 224px.
VIT_TEACHERS = dict(siglip_b16="SigLIP B/16 224", deit3_b16="deit3_B_224_21k")
# runlocal's ViT (from scratch): 16 tokens at 32px.
LOCAL_VIT = dict(variant=None, patch_size=8, width=32, depth=2, mlp_dim=64, num_heads=2)


def vit_teacher(model: str, runlocal: bool) -> tuple[dict, str | None]:
  """(Model kwargs, file) of the zoo ViT `:model=`; runlocal: a tiny ViT of
  the same pooling, and no file (it trains from scratch)."""
  from big_distill.models import vit  # pylint: disable=g-import-not-at-top
  if model not in VIT_TEACHERS:
    raise errors.ConfigError(f"model={model!r}: one of {', '.join(VIT_TEACHERS)}.")
  entry = vit.ZOO[VIT_TEACHERS[model]]
  if runlocal:
    return {**LOCAL_VIT, "pool_type": entry.kwargs["pool_type"]}, None
  return dict(entry.kwargs), entry.path


def vit_teacher_workdir(dataset: str, model: str, runlocal: bool) -> str:
  """Where configs/teachers/vit.py's command writes the teacher (its student.npz)."""
  return f"workdirs/teachers/{dataset}_vit_{model}{'_local' if runlocal else ''}"
