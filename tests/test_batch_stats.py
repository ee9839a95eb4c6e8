"""Students with batch statistics (BatchNorm) in the trainer, and training on
another data set's images.

In-process: the state carries the student's variables as one dict, with its
`batch_stats` (only when it has them; checkpoints keep the tree they always
had), the jitted step updates them, evaluation reads the running averages,
teachers with them run in inference mode, student_init keeps them. CLI: a
MobileNet v3 BN student from a BiT teacher on 8 fake devices (data x fsdp),
whose statistics change, are exported, and are restored bit for bit after a
kill (its later checkpoints dropped) and a rerun. And `check_num_classes`:
images of another data set are accepted (their labels ignored, said in one
log line); a wrong class count on the task's own data is still refused.
"""

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

from big_distill import errors
from big_distill import benchmark
from big_distill import checks
from big_distill import model_set
from big_distill import plan
from big_distill import setup
from big_distill import weights
from big_distill.data import datasets
from big_distill.data import input as input_lib
from tests import helpers
from tests import tiny_config
from tests import tiny_mobilenet_config

REPO = Path(__file__).resolve().parents[1]
MNV3_CONFIG = str(REPO / "tests" / "tiny_mobilenet_config.py")


def _config(module, arg):
  c = module.get_config(arg)
  c.lock()
  return c


# ---- In process: state, step, predict ----------------------------------------


class Built:
  def __init__(self, config):
    self.config = config
    self.models = model_set.build_models(config)
    self.mesh = plan.make_mesh(config)
    d = plan.durations(config)
    self.s = setup.build(config, self.models, self.mesh, total_steps=d.total,
                         warmup_steps=d.warmup)
    self.teachers = weights.load_teachers(config, self.models, self.mesh)


@pytest.fixture(scope="module")
def bn(tmp_path_factory, fashion_data_dir):
  teacher = tiny_config.write_teacher(tmp_path_factory.mktemp("bn") / "teacher.npz")
  b = Built(_config(tiny_mobilenet_config,
                    f"data_dir={fashion_data_dir},teacher={teacher},steps=4,"
                    "split=train[:160],subset=0,evals=false"))
  # A second call of the jitted init makes a copy of state0 (the step donates
  # its input) without compiling a jnp.copy for each of its leaf shapes.
  b.fresh_state = lambda: b.s.init_state(jax.random.key(b.config.seed))
  b.state0 = b.fresh_state()
  batches = input_lib.to_global(input_lib.make_train_dataset(b.config),
                                jax.sharding.NamedSharding(b.mesh, jax.sharding.PartitionSpec()))
  b.batch = next(batches)
  b.state1, b.metrics = b.s.train_step(b.fresh_state(), b.teachers, b.batch)
  return b


def test_bn_student_state_carries_batch_stats_outside_the_optimizer(bn):
  assert "batch_stats" in model_set.weight_shapes(bn.models, "student")
  assert set(bn.s.state) == {"variables", "opt", "step"}
  assert set(bn.s.state["variables"]) == {"params", "batch_stats"}
  # Checkpoints keep the tree of runs written before: collections beside opt.
  assert set(bn.s.checkpoint_state) == {"params", "opt", "step", "batch_stats"}
  shapes = model_set.variable_shapes(bn.models.student, bn.models.res["student"])
  assert (jax.tree.structure(bn.s.state["variables"]["batch_stats"])
          == jax.tree.structure(shapes["batch_stats"]))
  # The optimizer sees the params only: its state is tx.init(params)'s.
  opt = jax.eval_shape(bn.s.tx.init, shapes["params"])
  assert jax.tree.structure(bn.s.state["opt"]) == jax.tree.structure(opt)
  # Sharded like the params: explicit NamedShardings on the mesh.
  for sh in jax.tree.leaves(bn.s.state_sharding["variables"]["batch_stats"]):
    assert isinstance(sh, jax.sharding.NamedSharding) and sh.mesh == bn.mesh
  # Fresh BatchNorm: means 0, variances 1.
  means = [v for p, v in jax.tree_util.tree_leaves_with_path(
      bn.state0["variables"]["batch_stats"])
           if p[-1].key == "mean"]
  assert means and all(not np.any(np.asarray(m)) for m in means)


def test_the_step_updates_batch_stats_with_the_batchs_statistics(bn):
  before = jax.tree.leaves(bn.state0["variables"]["batch_stats"])
  after = jax.tree.leaves(bn.state1["variables"]["batch_stats"])
  changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
  assert all(changed), f"{sum(changed)} of {len(changed)} statistics changed"
  # One step of momentum 0.99 from (mean 0, var 1): 1% of the way to the
  # batch's statistics; the variances of the batch are positive.
  var = np.asarray(bn.state1["variables"]["batch_stats"]["stem_norm"]["var"])
  assert np.all(var > 0.99) and np.all(var != 1)
  assert int(bn.state1["step"]) == 1
  assert np.isfinite(float(bn.metrics["train/loss"]))


def test_eval_uses_the_running_averages(bn):
  # A random head (it starts at zero, and warm-up's first step does not move
  # it), so that the logits show what the features do.
  params = bn.state1["variables"]["params"]
  head = jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape)
  stats = bn.state1["variables"]["batch_stats"]
  state = {**bn.state1, "variables": {
      "params": {**params, "head": {**params["head"], "kernel": head}}, "batch_stats": stats}}
  images = {"student": bn.batch["image"]["student"]}
  predict = jax.jit(setup.make_predict(bn.models), static_argnums=3)
  logits = np.asarray(predict(setup.student_weights(state), bn.teachers, images,
                              ("student",))["student"])
  variables = state["variables"]
  inference = np.asarray(bn.models.student.apply(variables, images["student"], train=False)[0])
  np.testing.assert_allclose(logits, inference, rtol=1e-5, atol=1e-6)
  (with_batch, _), _ = bn.models.student.apply(variables, images["student"], train=True,
                                               mutable=["batch_stats"])
  assert np.abs(logits - np.asarray(with_batch)).max() > 1e-3
  # ... and they matter: other statistics, other predictions.
  shifted = {**state, "variables": {
      **variables, "batch_stats": jax.tree.map(lambda x: x + 0.5, variables["batch_stats"])}}
  other = np.asarray(predict(setup.student_weights(shifted), bn.teachers, images,
                             ("student",))["student"])
  assert np.abs(other - logits).max() > 1e-3


def test_student_init_keeps_batch_stats(bn, tmp_path):
  from big_distill.models import mobilenet_v3  # pylint: disable=g-import-not-at-top
  host = jax.device_get(setup.student_weights(bn.state1))
  path = str(tmp_path / "student.npz")
  mobilenet_v3.save(host, path)
  loaded = weights.load_weights(bn.config, "student", bn.models.student, path)
  state = setup.with_params(bn.s, bn.fresh_state(), loaded)
  for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(setup.student_weights(state))):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  assert jax.tree.structure(state) == jax.tree.structure(bn.state0)


def test_a_teacher_with_batch_stats_runs_in_inference_mode(bn):
  student = bn.models.student
  models = model_set.Models(student=student, teachers={"t1": student},
                            res={"student": 16, "t1": 16})
  variables = setup.student_weights(bn.state1)
  images = {"t1": bn.batch["image"]["student"]}
  out = setup.make_teacher_forward(models)({"t1": variables}, images)["t1"]
  expected = student.apply(variables, images["t1"], train=False)[0]
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-5, atol=1e-6)


def test_bit_student_state_is_unchanged(fashion_data_dir, tmp_path):
  teacher = tiny_config.write_teacher(tmp_path / "teacher.npz")
  config = _config(tiny_config, f"data_dir={fashion_data_dir},teacher={teacher},evals=false")
  models = model_set.build_models(config)
  assert set(model_set.weight_shapes(models, "student")) == {"params"}
  s = setup.build(config, models, plan.make_mesh(config), total_steps=4, warmup_steps=1)
  assert set(s.state) == {"variables", "opt", "step"} and set(s.state["variables"]) == {"params"}
  # Its checkpoints keep the tree they always had.
  assert set(s.checkpoint_state) == {"params", "opt", "step"}


# ---- The CLI: 8 devices, kill and resume bit for bit -------------------------


def _run_cli(workdir, arg, *flags):
  # One compilation cache for both runs of the test: the resumed run reuses the
  # first run's programs (the same programs; only the compile time is saved).
  # The tests' fast-compile flags (-O0, elemental emitters): the first run is
  # mostly compiling (train step, evaluators, init on 8 devices), and compiles
  # faster so (96 -> 46 CPU-s for that run, measured against XLA's default
  # level, which had been chosen over -O0 with the fusion emitters); both
  # runs use the same flags, so bit for bit still compares like with like.
  env = dict(os.environ, XLA_FLAGS=helpers.xla_flags(8),
             PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(Path(workdir).parent / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  cmd = [sys.executable, "-m", "big_distill.train", f"--config={MNV3_CONFIG}:{arg}",
         f"--workdir={workdir}", "--config.mesh.data=4", *flags]
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)


def _npz(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def test_bn_mobilenet_student_through_the_cli_resumes_bit_for_bit(tmp_path, fashion_data_dir):
  teacher = tiny_config.write_teacher(tmp_path / "teacher.npz")
  # 4 steps, a checkpoint after 2 (warm-up's end): the resumed run restores
  # the state, batch statistics and input position at step 2 and runs 2 more
  # steps (a step costs ~1 CPU-s here, compiling ~30).
  arg = (f"data_dir={fashion_data_dir},teacher={teacher},steps=4,ckpt=2,log=1,fsdp=2,"
         "split=train[:160],subset=0")
  whole = tmp_path / "whole"
  r = _run_cli(whole, arg)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "mesh {'data': 4, 'fsdp': 2}" in r.stderr
  exported = _npz(whole / "student.npz")
  stats = {k: v for k, v in exported.items() if k.startswith("batch_stats/")}
  assert stats and all(np.any(v != (k.endswith("/var"))) for k, v in stats.items()), \
      "some batch statistics never moved from their initial values"
  metrics = (whole / "metrics.jsonl").read_text()
  assert '"test/student_top1"' in metrics and '"dist/t1_agree_top1"' in metrics

  # A kill after step 2's checkpoint: the workdir as it was, later saves gone.
  killed = tmp_path / "killed"
  shutil.copytree(whole, killed, ignore=shutil.ignore_patterns("student.npz", "events.*"))
  shutil.rmtree(killed / "checkpoints" / "4")
  r = _run_cli(killed, arg)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resumed from the checkpoint at step 2" in r.stderr
  resumed = _npz(killed / "student.npz")
  assert sorted(resumed) == sorted(exported)
  differ = [k for k in exported if exported[k].tobytes() != resumed[k].tobytes()]
  assert not differ, f"resumed run differs in {differ[:5]}"


# ---- Another data set's images -----------------------------------------------


def _foreign_config(fashion_data_dir, folder_data_dir, **fields):
  """tiny_config trained on the image-folder fixture (3 classes), evaluated on
  Fashion-MNIST (10): distillation on another data set's images."""
  c = tiny_config.get_config(f"data_dir={fashion_data_dir},teacher=t.npz")
  from tests import conftest  # pylint: disable=g-import-not-at-top
  c.input.data.name, c.input.data.data_dir = conftest.FOLDER_NAME, folder_data_dir
  c.input.data.balanced_subset = None
  for k, v in fields.items():
    c[k] = v
  return c


def test_check_num_classes_accepts_another_data_sets_images(fashion_data_dir, folder_data_dir,
                                                            caplog):
  c = _foreign_config(fashion_data_dir, folder_data_dir)
  assert datasets.num_classes(c.input.data) == 3 != c.num_classes
  assert not checks.training_labels_are_the_tasks(c)
  with caplog.at_level(logging.INFO):
    checks.check_num_classes(c)
  lines = [r.getMessage() for r in caplog.records if "labels of the training data" in
           r.getMessage()]
  assert len(lines) == 1 and "bd_test_images" in lines[0] and "fashion_mnist" in lines[0]


def test_check_num_classes_refuses_a_wrong_count_on_the_tasks_own_data(fashion_data_dir):
  c = tiny_config.get_config(f"data_dir={fashion_data_dir},teacher=t.npz")
  c.num_classes = 7
  assert checks.training_labels_are_the_tasks(c)
  with pytest.raises(errors.ConfigError, match=r"num_classes=7.*config.input.data .*10 classes"):
    checks.check_num_classes(c)


def test_supervised_run_on_another_data_sets_images_is_refused(fashion_data_dir,
                                                               folder_data_dir):
  c = _foreign_config(fashion_data_dir, folder_data_dir, teachers=())
  with pytest.raises(errors.ConfigError, match="without teachers"):
    checks.check_num_classes(c)


def test_the_step_ignores_another_data_sets_labels(fashion_data_dir, folder_data_dir):
  c = _foreign_config(fashion_data_dir, folder_data_dir)
  c.distill.label_weight = 1.0  # Even when asked for: these labels are not the task's.
  models = model_set.build_models(c)
  mesh = plan.make_mesh(c)
  s = setup.build(c, models, mesh, total_steps=2, warmup_steps=1)
  batch = {"image": {k: jax.ShapeDtypeStruct((16, r, r, 3), jnp.float32)
                     for k, r in models.res.items()},
           "label": jax.ShapeDtypeStruct((16,), jnp.int32)}
  teachers = benchmark.abstract_teachers(c, models, mesh)
  _, metrics = jax.eval_shape(s.train_step, s.state, teachers, batch)
  assert "train/t1_loss" in metrics and "train/label_loss" not in metrics
  c.input.data.name = "fashion_mnist"  # The task's own images: their labels count.
  s = setup.build(c, models, mesh, total_steps=2, warmup_steps=1)
  _, metrics = jax.eval_shape(s.train_step, s.state, teachers, batch)
  assert "train/label_loss" in metrics
