"""A tiny Fashion-MNIST config for trainer tests (CPU, seconds per run).

    --config=tests/tiny_config.py:data_dir=DIR,teacher=T.npz,steps=12

`teacher=''` gives a supervised run; `split=train[:160],subset=0` trains on
the first 160 images only (a cheaper start). Shapes: a BiT R26 of width 1/8 at
16px (student) and 24px (teacher), batch 16. `replica_parallel=1`: orbax's
replica-parallel saving, the trainer's default (off here; see below).
"""

from big_distill import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(
      arg, data_dir="", teacher="", views="consistent", steps=12, ckpt=6, log=2,
      mixup=1.0, student_init="", fsdp=1, evals=True, batch=16, optim="adam",
      subset=1020, res=16, cache="encoded", teacher_res=24, lr=0.01, split="train",
      replica_parallel=0)
  c = config_lib.base()
  c.seed = 3
  c.input.data.name = "fashion_mnist"
  c.input.data.data_dir = a.data_dir or None
  c.input.data.split = a.split
  c.input.data.balanced_subset = a.subset or None
  c.input.cache = a.cache
  c.input.batch_size = a.batch
  c.input.pp = "decode|grayscale_to_rgb|resize(28)"
  c.input.pp_random = "random_crop(24)|flip_lr"
  c.input.pp_fixed = "central_crop(24)"
  c.input.pp_post = "value_range(-1, 1)"
  c.num_classes = 10
  c.student_name = "bit"
  c.student = dict(depth=26, width=0.125)
  c.student_res = a.res
  c.student_init = a.student_init or None
  if a.teacher:
    c.teachers = ("t1",)
    c.t1_name = "bit"
    c.t1 = dict(depth=26, width=0.125)
    c.t1_res = a.teacher_res
    c.t1_init = a.teacher
  else:
    c.teachers = ()
  c.distill.views = a.views
  c.mixup.p = a.mixup
  c.optim.name = a.optim
  c.lr = a.lr
  c.wd = 1e-4
  c.schedule.warmup_steps = min(2, a.steps)
  c.total_steps = a.steps
  c.ckpt_steps = a.ckpt
  # Off unless a test asks (the multi-process and device-count tests do): its
  # slicing programs are ~10 s of compiling at a multi-device run's first save.
  c.ckpt_replica_parallel = bool(a.replica_parallel)
  c.log_training_steps = a.log
  c.mesh.fsdp = a.fsdp
  c.fsdp_min_size = 2**10
  if a.evals:
    c.evals.test = config_lib.eval_config()
    c.evals.test.data.name = "fashion_mnist"
    c.evals.test.data.split = "test[:64]"
    c.evals.test.data.data_dir = c.input.data.data_dir
    c.evals.test.pp = "decode|grayscale_to_rgb|resize(28)|central_crop(24)|value_range(-1, 1)"
    c.evals.test.batch_size = 32
    c.evals.test.log_steps = a.steps
    if a.teacher:
      c.evals.dist = c.evals.test.copy_and_resolve_references()
      c.evals.dist.type = "distance"
  return c


def write_teacher(path, *, depth=26, width=0.125, res=24, num_classes=10, seed=0):
  """A random BiT teacher .npz with a non-zero head (tests/helpers.py)."""
  del res  # BiT's parameters do not depend on the resolution.
  from tests import helpers  # pylint: disable=g-import-not-at-top
  return helpers.write_random_bit(path, num_classes, depth=depth, width=width, seed=seed)
