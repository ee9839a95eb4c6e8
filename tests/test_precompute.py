"""Fixed teachers with precomputed outputs (precompute.py, distill.fixed).

The tables are checked against the teacher's own forward on views rebuilt
here from TFDS's decoded images and the pp ops (not through the input
pipeline); the step's FLOPs against the teacher forward's; the file's reuse
and invalidation through the log and a counter of passes; the trainer against
the same run with the teacher forward in the step, and a killed run's rerun
(in-process, the kill as the workdir it leaves); 2 processes as
tests/test_multiprocess.py runs them. Tiny models, float32, the first 40 Fashion-MNIST training images.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from big_distill import benchmark
from big_distill import costs
from big_distill import errors
from big_distill import precompute
from big_distill import checks
from big_distill import model_set
from big_distill import plan
from big_distill import setup
from big_distill import weights
from big_distill import train
from big_distill.data import pp as pp_lib
from tests import helpers
from tests import tiny_config
from tests.helpers import free_port as _free_port, read_log as _read, wait_all as _wait_all
from tests.helpers import (finished_steps, params_differences, read_params, resumed_step,
                           train_rows)

REPO = Path(__file__).resolve().parents[1]
N = 40  # train[:40]: 5 batches of 8.
SPLIT = f"train[:{N}]"
# Float32 logits of the same images in batches of other sizes: XLA may pick
# other loop orders; measured differences ~1e-6.
RTOL, ATOL = 1e-5, 1e-5


def make_config(data_dir, teacher, fixed="cc", steps=3, **fields):
  """The tiny config on train[:40], views='fixed', no mixup, `distill.fixed`."""
  c = tiny_config.get_config(
      f"data_dir={data_dir},teacher={teacher},steps={steps},log=1,ckpt=3,evals=false,"
      f"split={SPLIT},subset=0,mixup=0,views=fixed,batch=8")
  c.distill.fixed = fixed
  c.input.pp_random = "inception_crop(24)|flip_lr"
  for path, value in fields.items():
    *parents, leaf = path.split("__")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  return tiny_config.write_teacher(tmp_path_factory.mktemp("teacher") / "t.npz")


@pytest.fixture(scope="module")
def examples(fashion_data_dir):
  """The decoded training examples of SPLIT, in TFDS's (file) order."""
  ds = tfds.builder("fashion_mnist", data_dir=fashion_data_dir).as_dataset(
      split=SPLIT, shuffle_files=False)
  return list(ds)


def built(config):
  models = model_set.build_models(config)
  mesh = plan.make_mesh(config)
  return models, mesh, weights.load_teachers(config, models, mesh)


def views(config, examples, pp_view, seeds=None, res=None):
  """f32[N, r, r, 3]: the teacher's view of every example, made here.

  `pp | pp_view`, an antialiased resize to the teacher's resolution where the
  view has another size (as the trainer resizes every model's view), pp_post.
  """
  view = pp_lib.parse(f"{config.input.pp}|{pp_view}")
  post = pp_lib.parse(config.input.pp_post)
  res = res or config.t1_res
  out = []
  for i, ex in enumerate(examples):
    data = {"image": ex["image"]}
    if seeds is not None:
      data["_rng"] = seeds(i)
    image = tf.cast(view(data)["image"], tf.float32)
    if image.shape[:2] != (res, res):
      image = tf.image.resize(image, (res, res), antialias=True)
    out.append(tf.cast(post({"image": image})["image"], tf.float32).numpy())
  return np.stack(out)


def teacher_logits(config, models, params, images):
  """The teacher's logits, in batches of the training batch size.

  The precomputation's batch size: the same compiled forward. At 24px the
  tiny BiT's last GroupNorms see 1x1 maps, which turn the rounding of other
  batch shapes (~1e-7) into ~1e-3 (tests/test_multiprocess.py).
  """
  forward = jax.jit(setup.make_teacher_forward(models))
  b = config.input.batch_size
  return np.concatenate([np.asarray(forward(params, {"t1": jnp.asarray(images[i:i + b])})["t1"],
                                    np.float32) for i in range(0, len(images), b)])


# ---- The tables ---------------------------------------------------------------


def test_cc_table_is_the_teachers_forward_on_the_fixed_view(fashion_data_dir, teacher,
                                                            examples):
  config = make_config(fashion_data_dir, teacher, "cc")
  models, mesh, params = built(config)
  table = precompute.compute(config, models, mesh, params)["t1"]
  # The teacher's 24px view is central_crop(24): no resize in between.
  want = teacher_logits(config, models, params, views(config, examples, config.input.pp_fixed))
  assert table.shape == (N, 10) and table.dtype == np.float32
  np.testing.assert_allclose(table, want, rtol=RTOL, atol=ATOL)
  assert np.abs(want[1:] - want[:-1]).max() > 0.1  # Rows differ: the ids matter.


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_ic_ens_of_one_crop_is_one_inception_crop_with_that_seed(fashion_data_dir, teacher,
                                                                 examples, t):
  config = make_config(fashion_data_dir, teacher, "ic_ens", distill__ensemble_crops=1,
                       distill__t=t)
  models, mesh, params = built(config)
  table = precompute.compute(config, models, mesh, params)["t1"]
  images = views(config, examples, config.input.pp_random,
                 seeds=lambda i: precompute.crop_seed(config.seed, i, 0))
  z = teacher_logits(config, models, params, images)
  # The same distribution at temperature t (pseudo-logits are logits up to a shift).
  np.testing.assert_allclose(jax.nn.log_softmax(table / t), jax.nn.log_softmax(z / t),
                             rtol=RTOL, atol=ATOL)
  # An inception crop, not the fixed view: the teacher sees something else.
  fixed = teacher_logits(config, models, params, views(config, examples, config.input.pp_fixed))
  assert np.abs(jax.nn.log_softmax(fixed) - jax.nn.log_softmax(z)).max() > 1e-2


def test_ic_ens_averages_probabilities_at_the_temperature(fashion_data_dir, teacher, examples):
  config = make_config(fashion_data_dir, teacher, "ic_ens", distill__ensemble_crops=2,
                       distill__t=2.0)
  models, mesh, params = built(config)
  table = precompute.compute(config, models, mesh, params)["t1"]
  t = config.distill.t
  probs = []
  for k in range(2):
    images = views(config, examples, config.input.pp_random,
                   seeds=lambda i, k=k: precompute.crop_seed(config.seed, i, k))
    probs.append(jax.nn.softmax(teacher_logits(config, models, params, images) / t))
  mean = (probs[0] + probs[1]) / 2
  assert np.abs(probs[0] - probs[1]).max() > 1e-3  # Two different crops.
  np.testing.assert_allclose(jax.nn.softmax(table / t), mean, rtol=1e-4, atol=1e-6)
  # The mean of probabilities, not of logits (which would be a different target).
  np.testing.assert_allclose(table, t * np.log(mean), rtol=1e-4, atol=1e-5)


def test_training_batches_carry_ids_and_the_students_image_only(fashion_data_dir, teacher,
                                                                 examples):
  from big_distill.data import input as input_lib  # pylint: disable=g-import-not-at-top
  config = make_config(fashion_data_dir, teacher, "rs")
  batches = input_lib.make_train_dataset(config, start_step=1).take(2).as_numpy_iterator()
  want = views(config, examples, config.input.pp_fixed, res=config.student_res)
  ids = []
  for batch in batches:
    assert sorted(batch) == ["_index", "image", "label"] and list(batch["image"]) == ["student"]
    # fix/rs: the student's image is the fixed view of the example of that id.
    np.testing.assert_allclose(batch["image"]["student"], want[batch["_index"]], atol=1e-5)
    np.testing.assert_array_equal(batch["label"],
                                  [int(examples[i]["label"]) for i in batch["_index"]])
    ids += batch["_index"].tolist()
  assert len(set(ids)) == 16  # Steps 1 and 2: within the first permutation of 40.


# ---- The step -------------------------------------------------------------------


def test_step_without_teacher_forward_saves_its_flops(monkeypatch):
  helpers.install_tiny_cnn(monkeypatch)
  config = _tiny_cnn_config()
  models = model_set.build_models(config)
  mesh = plan.make_mesh(config)
  B, K = config.input.batch_size, config.num_classes
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  images = {n: f32(B, r, r, 3) for n, r in models.res.items()}
  labels = jax.ShapeDtypeStruct((B,), jnp.int32)
  teachers = benchmark.abstract_teachers(config, models, mesh)

  def step_flops(fixed):
    c = config.copy_and_resolve_references()
    c.distill.fixed = fixed
    s = setup.build(c, models, mesh, total_steps=10, warmup_steps=0)
    if fixed:
      batch = {"image": {"student": images["student"]}, "label": labels,
               "teacher_logits": {"t1": f32(B, K)}}
    else:
      batch = {"image": images, "label": labels}
    return costs.flops(s.train_step, s.state, teachers, batch)

  with_forward, precomputed = step_flops(""), step_flops("cc")
  forward = costs.flops(jax.jit(setup.make_teacher_forward(models)), teachers,
                            {"t1": images["t1"]})
  print(f"\nstep FLOPs {with_forward:.4g} -> {precomputed:.4g}; teacher forward {forward:.4g}")
  assert forward > 0.2 * with_forward  # The teacher is a real share of the step.
  assert abs((with_forward - precomputed) - forward) < 0.02 * forward


def _tiny_cnn_config():
  from big_distill import config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base()
  c.num_classes = 5
  c.input.batch_size = 8
  c.student_name = c.t1_name = "tiny_cnn"
  c.student, c.t1 = dict(width=4), dict(width=16)
  c.student_res, c.t1_res = 24, 32
  c.distill.views = "fixed"
  c.mixup.p = 0.0
  return c


# ---- The file: reuse and invalidation --------------------------------------------


def test_stored_outputs_are_reused_and_invalidated_by_their_inputs(fashion_data_dir, tmp_path,
                                                                   monkeypatch, caplog):
  teacher = tiny_config.write_teacher(tmp_path / "t.npz", seed=5)
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  passes = []
  compute = precompute.compute
  monkeypatch.setattr(precompute, "compute", lambda *a: passes.append(1) or compute(*a))

  def run(config):
    caplog.clear()
    models, mesh, params = built(config)
    with caplog.at_level(logging.INFO):
      tables = precompute.load_or_compute(config, models, mesh, params, workdir)
    return tables, caplog.text

  config = make_config(fashion_data_dir, teacher, "cc")
  first, _ = run(config)
  assert len(passes) == 1 and os.path.exists(os.path.join(workdir, precompute.FILE))
  again, log = run(config)
  assert len(passes) == 1 and "Loaded the precomputed teacher outputs" in log
  np.testing.assert_array_equal(again["t1"], first["t1"])
  # rs/cc store raw logits: the temperature does not change them.
  _, log = run(make_config(fashion_data_dir, teacher, "cc", distill__t=4.0))
  assert len(passes) == 1 and "Loaded" in log

  # Another teacher in the same file: recomputed, and the log says why.
  tiny_config.write_teacher(teacher, seed=6)
  changed, log = run(config)
  assert len(passes) == 2 and "teachers.t1.params_sha256" in log, log
  assert np.abs(changed["t1"] - first["t1"]).max() > 0.1
  # Another view.
  _, log = run(make_config(fashion_data_dir, teacher, "cc", input__pp_fixed="resize(24)"))
  assert len(passes) == 3 and "pp.view: 'central_crop(24)' -> 'resize(24)'" in log, log
  # ic_ens: the crop count and the temperature matter.
  run(make_config(fashion_data_dir, teacher, "ic_ens", distill__ensemble_crops=1))
  _, log = run(make_config(fashion_data_dir, teacher, "ic_ens", distill__ensemble_crops=2))
  assert len(passes) == 5 and "ensemble_crops: 1 -> 2" in log, log
  _, log = run(make_config(fashion_data_dir, teacher, "ic_ens", distill__ensemble_crops=2,
                           distill__t=2.0))
  assert len(passes) == 6 and "t: 1.0 -> 2.0" in log, log


# ---- The trainer -------------------------------------------------------------------


class _Records(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope="module", autouse=True)
def compile_cache(shared_folder):
  """One persistent compilation cache for the module, shared by both xdist
  workers: the killed run's rerun reads back what `fixed_run` compiled."""
  with helpers.jax_settings(**helpers.persistent_cache(
      shared_folder("precompute_jax_cache", lambda path: None))):
    yield


@pytest.fixture(scope="module")
def fixed_run(shared_folder, fashion_data_dir):
  """fix/cc trained in-process for 6 steps, checkpoints at 2, 4 and 6 (the
  killed run's test cuts it back to step 2): its config, workdir and log
  (INFO, with the compiles). The two trainer tests below share it; made once
  per session for both xdist workers (each test writes only its own folder)."""
  def build(root):
    shutil.rmtree(root / "run", ignore_errors=True)  # A build that failed midway.
    config = make_config(fashion_data_dir, tiny_config.write_teacher(root / "t.npz"), "cc",
                         steps=6, ckpt_steps=2)
    records, logger = _Records(), logging.getLogger()
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
      with jax.log_compiles():
        train.train(config, str(root / "run"))
    finally:
      logger.removeHandler(records)
      logger.setLevel(level)
    (root / "log.txt").write_text("\n".join(records.messages))
  root = shared_folder("precompute_fixed_run", build)
  config = make_config(fashion_data_dir, str(root / "t.npz"), "cc", steps=6, ckpt_steps=2)
  config.lock()
  return config, root / "run", (root / "log.txt").read_text()


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r["train/t1_loss"] for r in rows if "train/t1_loss" in r]


def test_training_matches_the_teacher_forward_in_the_step(fashion_data_dir, fixed_run, tmp_path):
  # fix/cc's student sees the very views of views='fixed' without
  # precomputation (the same stream): the losses agree to float rounding.
  config, fixed, log = fixed_run
  stepped = str(tmp_path / "stepped")
  train.train(make_config(fashion_data_dir, config.t1_init, "", steps=6, ckpt_steps=2), stepped)
  # One compile of the step, as for every run.
  assert len([m for m in log.splitlines() if "Compiling jit(update)" in m]) == 1, log
  assert "Precomputing the teachers' outputs" in log
  assert os.path.exists(os.path.join(fixed, precompute.FILE))
  a, b = _losses(stepped), _losses(fixed)
  assert len(a) == len(b) == config.total_steps and a[0] > 0.01
  # The first 3 steps, as when both runs were 3 steps long: they agree to 1e-5
  # here; from step 4 on, the float rounding of the two programs grows by 10x
  # or more a step (1e-4, then 1e-2 relative at steps 5 and 6).
  np.testing.assert_allclose(b[:3], a[:3], rtol=1e-4)
  # Resuming (and reading the table back) is in the killed run's test below.


def test_a_killed_runs_rerun_reads_the_table_back_and_is_bitwise_exact(fixed_run, tmp_path,
                                                                        caplog):
  # The killed run is the finished one cut back to its step-2 checkpoint, as a
  # kill after that save leaves it: later checkpoints and the export gone, its
  # table and metrics.jsonl (rows past step 2 included) kept. SIGKILL at a
  # random moment, and the checkpoints it leaves, are tests/test_reliability.py's,
  # through the CLI; the rerun here is in-process (train.train, which the
  # command runs), and its programs are the persistent cache's.
  config, ref, log = fixed_run
  assert "Precomputing the teachers' outputs" in log
  assert finished_steps(ref) == [2, 4, 6]
  workdir = tmp_path / "killed"
  shutil.copytree(ref, workdir, ignore=shutil.ignore_patterns("student.npz", "events.*"))
  for step in (4, 6):
    shutil.rmtree(workdir / "checkpoints" / str(step))
  assert os.path.exists(workdir / precompute.FILE)
  with caplog.at_level(logging.INFO):
    train.train(config, str(workdir))
  out = caplog.text
  assert "Loaded the precomputed teacher outputs" in out, out[-4000:]
  assert "Precomputing the teachers' outputs" not in out, out[-4000:]
  assert resumed_step(out) == 2, out[-3000:]
  assert not params_differences(read_params(ref), read_params(workdir))
  assert train_rows(workdir) == train_rows(ref)


def test_bad_fixed_configs_are_one_clear_error(fashion_data_dir, teacher):
  cases = [
      (dict(distill__fixed="central"), "must be '' \\(off\\) or one of"),
      (dict(distill__views="consistent"), "needs config.distill.views='fixed'"),
      (dict(mixup__p=1.0), "needs mixup off"),
      (dict(input__cache="none"), "host caches provide.*got 'none'"),
      (dict(input__cache="device"), "host caches provide.*got 'device'"),
      (dict(distill__fixed="ic_ens", distill__loss="euclidean"), "Use loss 'kl'"),
      (dict(distill__fixed="ic_ens", distill__ensemble_crops=0), "positive integer"),
  ]
  for fields, message in cases:
    config = make_config(fashion_data_dir, teacher, "cc", **fields)
    with pytest.raises(errors.ConfigError, match=message):
      checks.check_config(config)
  config = make_config(fashion_data_dir, teacher, "cc")
  config.teachers = ()
  with pytest.raises(errors.ConfigError, match="needs teachers"):
    checks.check_config(config)


# ---- The paper configs' `:fixed=` -------------------------------------------------


@pytest.mark.parametrize("name", ["flowers_r50", "pets_r50", "food101_r50", "sun397_r50"])
def test_paper_configs_have_the_three_fixed_teachers(name):
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f"configs.{name}")
  funmatch = module.get_config("variant=fast")
  for kind in precompute.KINDS:
    c = module.get_config(f"variant=fast,fixed={kind}")
    checks.check_config(c)  # Cached input, views 'fixed', no mixup, kl.
    assert (c.distill.fixed, c.distill.views, c.mixup.p) == (kind, "fixed", 0.0)
    # Everything but the views and mixup is function matching's recipe.
    assert (c.lr, c.wd, c.distill.t, c.total_epochs, c.distill.loss) == (
        funmatch.lr, funmatch.wd, funmatch.distill.t, funmatch.total_epochs, "kl")
    assert sorted(c.evals) == sorted(funmatch.evals)
    teacher_view = precompute.teacher_pp(c)
    student_view = c.input.pp_fixed if kind == "rs" else c.input.pp_random
    if kind == "rs":  # The whole image, for both.
      assert teacher_view == student_view == "resize(128)"
    elif kind == "cc":
      assert teacher_view == "resize_small(160)|central_crop(128)"
      assert student_view == "resize_small(160)|random_crop(128)|flip_lr"
    else:
      assert teacher_view == student_view == "inception_crop(128)|flip_lr"
      assert c.distill.ensemble_crops == 1000
  assert module.get_config("fixed=ic_ens,runlocal").distill.ensemble_crops == 4
  with pytest.raises(errors.ConfigError, match="Unknown fixed='ic'; known: rs, cc, ic_ens"):
    module.get_config("fixed=ic")


# ---- Two processes ----------------------------------------------------------------------


def _start_precompute(out, config_arg, *, processes, process_id, port, devices):
  env = dict(os.environ, XLA_FLAGS=helpers.xla_flags(devices),
             PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)
  cmd = [sys.executable, __file__, out, json.dumps(config_arg), str(processes),
         str(process_id), str(port)]
  log = f"{out}.log"
  with open(log, "w") as f:
    return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO), log


def test_two_processes_compute_the_table_of_one(fashion_data_dir, teacher, tmp_path):
  # 2 processes x 2 devices against 1 process x 4 devices: the same mesh and
  # per-device batches, so the same numbers (as in tests/test_multiprocess.py).
  # A 2-crop ensemble of 39 examples: process 0 takes 20, process 1 19, so
  # process 1's last batch is padded.
  config_arg = dict(data_dir=fashion_data_dir, teacher=teacher, fixed="ic_ens", crops=2, t=2.0,
                    split="train[:39]")
  port = _free_port()
  jobs = []
  try:
    out = str(tmp_path / "one.npz")
    p, log = _start_precompute(out, config_arg, processes=1, process_id=0, port=0, devices=4)
    jobs.append(("1 process x 4 devices", p, log))
    for i in range(2):
      out = str(tmp_path / f"two.{i}.npz")
      p, log = _start_precompute(out, config_arg, processes=2, process_id=i, port=port,
                                 devices=2)
      jobs.append((f"process {i} of 2", p, log))
    _wait_all(jobs, 600)
  finally:
    for _, p, _ in jobs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert "over 4 devices (1 processes)" in _read(tmp_path / "one.npz.log")
  assert "over 4 devices (2 processes)" in _read(tmp_path / "two.0.npz.log")
  want = np.load(tmp_path / "one.npz")["t1"]
  assert want.shape == (39, 10) and np.all(np.isfinite(want))
  for i in range(2):  # Every process holds the whole table.
    got = np.load(tmp_path / f"two.{i}.npz")["t1"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"process {i}")


def _precompute_worker(out, config_arg, processes, process_id, port):
  """One process of a job: the table as it holds it, saved to `out`."""
  from big_distill import parallel  # pylint: disable=g-import-not-at-top
  if processes > 1:
    parallel.initialize_distributed(f"localhost:{port}", processes, process_id)
  a = json.loads(config_arg)
  config = make_config(a["data_dir"], a["teacher"], a["fixed"], distill__ensemble_crops=a["crops"],
                       distill__t=a["t"], input__data__split=a["split"])
  models, mesh, params = built(config)
  print(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices "
        f"({jax.process_count()} processes)", flush=True)
  np.savez(out, **precompute.compute(config, models, mesh, params))


if __name__ == "__main__":
  _precompute_worker(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6]))
