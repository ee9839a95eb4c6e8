"""Reliability: exact resume after SIGKILL/SIGTERM, damaged checkpoints, clear
early errors, non-finite losses.

Training runs are the CLI in a subprocess (tests/helpers.py), killed and
restarted like a scheduler would. They share one persistent JAX compilation cache, so the tiny
model compiles once per session and the other runs pay only their start-up.
The uninterrupted reference run is shared by all tests (and pytest-xdist
workers). Errors that must come before any expensive work run `train.train`
in-process with tripwires on the checkpointer and the input pipeline (the
first expensive things the trainer builds): reaching them fails the test.
"""

import gc
import glob
import json
import logging
import os
import pickle
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from absl import flags
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from big_distill import checkpoint as ckpt_lib
from big_distill import config_lib
from big_distill import errors
from big_distill import train
from big_distill.data import datasets
from big_distill.data import input as input_lib
from big_distill.data import prepare
from tests import tiny_config
from tests.helpers import (CKPT, CONFIG, STEPS, Cli, ReachedExpensiveWork, Reference,
                           assert_same_as_reference, existing_run, finished_steps, make_config,
                           resumed_step, run_arg, run_to_end, snapshot, train_rows, tripwire,
                           unfinished_saves, wait_first_checkpoint)

KILL_POINTS = 3
KILL_SEED = 20240611


# ---- Shared runs (the `reference` run is conftest's) ----------------------------


def copy_run(ref: Reference, dest, steps=None) -> Path:
  """The reference workdir without its export (and only checkpoints `steps`)."""
  shutil.copytree(ref.workdir, dest, ignore=shutil.ignore_patterns("student.npz", "events.*"))
  for s in finished_steps(dest):
    if steps is not None and s not in steps:
      shutil.rmtree(dest / "checkpoints" / str(s))
  return dest


# ---- 1. Exact resume after SIGKILL and SIGTERM -------------------------------


def logged_steps(workdir) -> list[int]:
  """Steps in a killed run's metrics.jsonl (its last line may be torn)."""
  steps = []
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
          pass
  return steps


def test_sigkill_at_random_points_then_rerun_is_bitwise_exact(reference, tmp_path, jax_cache):
  """Kill -9 the CLI at random moments after its first checkpoint; rerun it.

  A kill point is a random step to reach (as logged in metrics.jsonl) and then a
  random short sleep: a wall-clock delay alone lands anywhere, or after the end,
  on a machine whose load varies. The kill points follow each other in one
  workdir: each rerun resumes from the newest checkpoint the kill left and is
  the run that the next kill point kills (a resumed run killed again), and the
  last rerun finishes; so KILL_POINTS kills take KILL_POINTS + 1 runs, and the
  finished run must be bitwise the uninterrupted one.
  """
  rng = np.random.default_rng(KILL_SEED)
  targets = sorted(rng.choice(np.arange(CKPT + 1, STEPS), KILL_POINTS, replace=False))
  workdir = tmp_path / "kill"
  results, failures = [], []
  for i, target in enumerate(targets):
    cli = Cli(workdir, reference.arg, log=tmp_path / f"kill{i}.log", cache=jax_cache)
    if i == 0:
      wait_first_checkpoint(cli)
    else:  # A rerun: it resumes before it trains on.
      while cli.proc.poll() is None and resumed_step(cli.output) is None:
        time.sleep(0.005)
    while cli.proc.poll() is None and max(logged_steps(workdir), default=0) < target:
      time.sleep(0.005)
    sleep = float(rng.uniform(0, 0.15))
    time.sleep(sleep)
    cli.proc.send_signal(signal.SIGKILL)
    rc = cli.wait()
    if i:  # The run this kill point killed resumed the previous kill point.
      check_resume(results[-1], cli.output, rc == -signal.SIGKILL or rc == 0, failures)
    results.append(dict(point=i, target_step=int(target), sleep_s=round(sleep, 3),
                        killed=rc == -signal.SIGKILL, last_logged_step=max(
                            logged_steps(workdir), default=0),
                        finished_ckpts=finished_steps(workdir),
                        save_in_progress=unfinished_saves(workdir)))
  rc2, out = run_to_end(workdir, reference.arg, log=tmp_path / "kill.rerun.log", cache=jax_cache)
  check_resume(results[-1], out, rc2 == 0, failures)
  try:
    assert_same_as_reference(reference, workdir, f"after {len(results)} kill points")
    exact = True
  except AssertionError as e:
    exact = False
    failures.append(str(e))
  print(f"\n{len(results)} SIGKILL points (seed {KILL_SEED}), the finished run exact: {exact}")
  for r in results:
    print("  ", json.dumps(r))
  assert not failures, "\n".join(failures)
  assert any(r["killed"] for r in results), "every run finished before its kill"


def check_resume(result, out, ran_on, failures):
  """The run after kill point `result` resumed from its newest finished checkpoint."""
  result["resumed_from"] = resumed_step(out)
  try:
    assert ran_on, out[-4000:]  # It ran until killed or to the end, no error.
    assert "cannot be read" not in out, out[-4000:]  # The kill damaged no checkpoint.
    finished = result["finished_ckpts"]
    assert finished and result["resumed_from"] == finished[-1], (finished, out[-3000:])
  except AssertionError as e:
    failures.append(f"kill point {result['point']}: {e}")


def test_sigterm_saves_where_it_stopped_and_rerun_is_bitwise_exact(reference, tmp_path,
                                                                    jax_cache):
  """SIGTERM: a checkpoint where it stopped; the rerun resumes there and ends
  bitwise as the uninterrupted run. The rerun also meets a second launch on
  its workdir (issue #18, test_cluster's fault): refused, writing nothing,
  while the rerun finishes as if alone (one run for both; a run of its own
  for the second launch cost ~25 CPU-s more)."""
  workdir = tmp_path / "term"
  cli = Cli(workdir, reference.arg, log=tmp_path / "term.log", cache=jax_cache)
  wait_first_checkpoint(cli)  # 13 steps to go: SIGTERM lands mid-run even on a busy machine.
  cli.proc.send_signal(signal.SIGTERM)
  rc = cli.wait()
  out = cli.output
  m = re.search(r"Preempted at step (\d+); checkpoint saved", out)
  assert m, f"no 'Preempted at step N' (rc={rc}); SIGTERM landed too late?\n{out[-4000:]}"
  stopped = int(m[1])
  print(f"\nSIGTERM: stopped at step {stopped}, exit code {rc}, "
        f"checkpoints {finished_steps(workdir)}")
  assert "Signal 15: saving a checkpoint" in out
  assert rc == train.PREEMPTED_EXIT_CODE == 143, (rc, out[-3000:])  # Not "finished".
  assert stopped in finished_steps(workdir), (stopped, finished_steps(workdir))
  assert stopped < STEPS and not (workdir / "student.npz").exists()
  assert max(train_rows(workdir)) == stopped
  first = Cli(workdir, reference.arg, log=tmp_path / "term.rerun.log", cache=jax_cache)
  try:
    while first.proc.poll() is None and resumed_step(first.output) is None:
      time.sleep(0.005)
    # Paused mid-run (as a slow step would be), so that the second launch
    # surely meets it running; a pause changes nothing it computes.
    first.proc.send_signal(signal.SIGSTOP)
    time.sleep(0.5)  # Let the stop land before the snapshot.
    before = snapshot(workdir)
    rc2, out2 = run_to_end(workdir, reference.arg, log=tmp_path / "second.log", cache=jax_cache)
    assert first.proc.poll() is None and not (workdir / "student.npz").exists()
    assert snapshot(workdir) == before, "the refused launch wrote into the workdir"
    first.proc.send_signal(signal.SIGCONT)
    assert rc2 == 2, out2[-3000:]
    errors = [l for l in out2.splitlines() if "error:" in l]
    assert len(errors) == 1 and "Traceback" not in out2, out2[-3000:]
    assert (f"is in use by process {first.proc.pid} on host {socket.gethostname()}"
            in errors[0]), errors
    assert first.wait() == 0, first.tail()
  finally:
    if first.proc.poll() is None:
      first.proc.send_signal(signal.SIGCONT)
      first.proc.kill()
  assert resumed_step(first.output) == stopped, first.tail(3000)
  assert_same_as_reference(reference, workdir, "after SIGTERM, the run that a second launch met")


# ---- 2. Damaged checkpoints ---------------------------------------------------


def _truncate(files):
  assert files
  for f in files:
    os.truncate(f, min(10, os.path.getsize(f)))


def damage(step_dir, how):
  step_dir = Path(step_dir)
  data = glob.glob(str(step_dir / "default" / "ocdbt.process_*" / "d" / "*"))
  if how == "truncate":
    _truncate(data)
  elif how == "delete_arrays":
    assert data
    for f in data:
      os.remove(f)
  elif how == "delete_item":
    shutil.rmtree(step_dir / "default")
  elif how == "empty_step_dir":
    shutil.rmtree(step_dir)
    step_dir.mkdir()
  else:
    raise ValueError(how)


def abstract_state(checkpoints_dir, step):
  mngr = ocp.CheckpointManager(checkpoints_dir)
  try:
    state = mngr.restore(step, args=ocp.args.StandardRestore())
  finally:
    mngr.close()
  return state, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                            sharding=x.sharding), state)


# Orbax reads a step's array files concurrently; when they are damaged, the reads
# still pending after the first failure are abandoned, and their coroutines raise
# when garbage-collected, where nobody can catch it: pytest reports each as an
# unraisable exception (about 20 per damaged step). The restore itself fails
# cleanly and falls back, which is what the test checks; the test collects the
# garbage itself, so that those reports surface under its own filter.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", [
    "truncate", "delete_arrays",
    "delete_item", "empty_step_dir"])
def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path,
                                                                    caplog, how):
  ckpts = copy_run(reference, tmp_path / "w") / "checkpoints"
  good, abstract = abstract_state(reference.workdir / "checkpoints", 15)
  damage(ckpts / "16", how)
  checkpointer = ckpt_lib.Checkpointer(str(ckpts))
  try:
    with caplog.at_level(logging.WARNING):
      step, state = checkpointer.restore(abstract)
  finally:
    checkpointer.close()
    gc.collect()  # The failed reads' coroutines, while this test's filters apply.
  assert step == 15
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), good, state)))
  logged = caplog.text
  assert re.search(r"Checkpoint at step 16 in \S+ cannot be read .*falling back", logged), logged


def test_no_readable_checkpoint_is_a_clear_error_not_a_fresh_start(reference, tmp_path,
                                                                   monkeypatch):
  workdir = copy_run(reference, tmp_path / "w")
  for s in finished_steps(workdir):
    damage(workdir / "checkpoints" / str(s), "truncate")
  before = snapshot(workdir)
  monkeypatch.setattr(input_lib, "make_train_dataset", tripwire("the input pipeline"))
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    train.train(make_config(reference.arg), str(workdir))
  msg = str(e.value)
  assert "None of the checkpoints" in msg and "step 16" in msg and "step 12" in msg
  assert "Refusing to start from scratch" in msg and "Move the directory away" in msg
  # Nothing written but the workdir lock's record of who last held it (the
  # refused run held the workdir while it looked for a checkpoint).
  without_lock = lambda snap: {k: v for k, v in snap.items() if k != "lock"}
  assert without_lock(snapshot(workdir)) == without_lock(before)


def test_rerun_over_a_damaged_newest_checkpoint_finishes_exactly(reference, tmp_path,
                                                                 jax_cache):
  workdir = copy_run(reference, tmp_path / "w")
  damage(workdir / "checkpoints" / "16", "truncate")
  rc, out = run_to_end(workdir, reference.arg, log=tmp_path / "rerun.log", cache=jax_cache)
  assert re.search(r"Checkpoint at step 16 .* cannot be read", out), out[-4000:]
  assert resumed_step(out) == 15, out[-4000:]
  assert rc == 0, out[-4000:]
  assert_same_as_reference(reference, workdir, "after falling back to step 15")


# ---- 3. Clear errors before any expensive work --------------------------------


@pytest.fixture
def refuse(monkeypatch, caplog):
  """refuse(config, workdir, errors, pattern): train() fails fast, workdir intact."""
  monkeypatch.setattr(train.ckpt_lib, "Checkpointer", tripwire("the checkpointer"))
  monkeypatch.setattr(input_lib, "make_train_dataset", tripwire("the input pipeline"))

  def run(config, workdir, errors, pattern):
    workdir = Path(workdir)
    before = snapshot(workdir) if workdir.is_dir() else None
    with caplog.at_level(logging.WARNING), jax.log_compiles():
      with pytest.raises(errors, match=pattern) as e:
        train.train(config, str(workdir))
    compiled = [r.getMessage()[:100] for r in caplog.records
                if re.search(r"Compiling jit\((update|init_state)", r.getMessage())]
    assert not compiled, compiled
    if before is not None:
      assert snapshot(workdir) == before, "the refused run changed the workdir"
    return str(e.value)
  return run


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  return tiny_config.write_teacher(tmp_path_factory.mktemp("teacher") / "t.npz")


@pytest.fixture(scope="module")
def misspelt(tmp_path_factory, fashion_data_dir, teacher, jax_cache):
  """The CLI with a misspelt --config override: (exit code, output, workdir intact).

  A flag error through the command itself, in a process of its own (its exit
  code, its one line, no traceback); other flag errors go through the same
  parser in-process (`parse_flags`).
  """
  path = tmp_path_factory.mktemp("flags")
  arg = run_arg(fashion_data_dir, teacher)
  workdir = existing_run(path / "misspelt", make_config(arg))
  before = snapshot(workdir)
  rc, text = run_to_end(workdir, arg, "--config.lrr=1", log=path / "misspelt.log",
                        cache=jax_cache)
  return rc, text, before == snapshot(workdir)


@pytest.fixture
def parse_flags(monkeypatch, capsys):
  """parse_flags(argv) -> (exit code, stderr): the train command's flags parsed
  in-process, as `python -m big_distill.train` parses them before main()."""
  def parse(argv):
    values = flags.FlagValues()
    monkeypatch.setattr(flags, "FLAGS", values)
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides from it.
    train.define_flags(values)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
      config_lib.flags_parser("big_distill.train")(argv)
    return e.value.code, capsys.readouterr().err
  return parse


def test_misspelt_config_key_is_refused_naming_it(misspelt):
  rc, out, intact = misspelt
  assert rc == 2 and intact, out[-2000:]
  assert "lrr" in out and 'Did you mean "lr"' in out, out[-2000:]


def test_misspelt_config_key_error_is_one_message(misspelt):
  rc, out, _ = misspelt
  assert "Traceback" not in out, out[-2000:]
  assert re.search(r"error: .*lrr.*", out), out[-2000:]


def test_wrong_type_for_config_field_is_refused(parse_flags, tmp_path, fashion_data_dir,
                                                teacher):
  arg = run_arg(fashion_data_dir, teacher)
  workdir = existing_run(tmp_path / "w", make_config(arg))
  before = snapshot(workdir)
  rc, out = parse_flags(["big_distill.train", f"--config={CONFIG}:{arg}",
                         f"--workdir={workdir}", "--config.lr=abc"])
  assert rc == 2 and snapshot(workdir) == before, out[-2000:]
  assert "Traceback" not in out, out[-2000:]
  assert re.search(r"--config.lr=abc: could not convert string to float: 'abc'", out), out[-2000:]


def test_missing_teacher_checkpoint(refuse, tmp_path, fashion_data_dir):
  config = make_config(run_arg(fashion_data_dir, str(tmp_path / "nope.npz")))
  msg = refuse(config, existing_run(tmp_path / "w", config), train.ConfigError,
               r"Teacher 't1': checkpoint \S*nope.npz does not exist")
  assert "config.t1_init" in msg  # The fix: where to set the path.


def test_missing_student_init(refuse, tmp_path, fashion_data_dir, teacher):
  config = make_config(run_arg(fashion_data_dir, teacher,
                               student_init=str(tmp_path / "nope.npz")))
  msg = refuse(config, existing_run(tmp_path / "w", config), train.ConfigError,
               r"nope\.npz does not exist")
  assert "config.student_init" in msg


@pytest.mark.parametrize("shape,first", [
    (dict(width=0.25), r"resnet/\S+: file \(.*\), model \(.*\)"),
    (dict(depth=50), r"resnet/\S+: missing from the file \(model .*\)")])
def test_teacher_whose_architecture_differs_from_its_config(refuse, tmp_path, fashion_data_dir,
                                                            teacher, shape, first):
  # The R26 x 1/8 teacher file, configured as a wider or deeper model.
  config = make_config(run_arg(fashion_data_dir, teacher), **{f"t1.{k}": v for k, v in shape.items()})
  msg = refuse(config, existing_run(tmp_path / "w", config), ValueError,
               "does not match the model")
  assert re.search(r"first mismatch first:\n  " + first, msg), msg
  assert "depth/width/num_classes" in msg


def test_teacher_with_another_number_of_classes(refuse, tmp_path, fashion_data_dir):
  teacher = tiny_config.write_teacher(tmp_path / "t5.npz", num_classes=5)
  config = make_config(run_arg(fashion_data_dir, teacher))
  # bit.load(head_mismatch="error") says so itself (no more all-zero-head guess).
  msg = refuse(config, existing_run(tmp_path / "w", config), errors.CheckpointError,
               "has a head for 5 classes, the model has num_classes=10")
  assert "Fine-tune it on this data set first" in msg


def test_num_classes_that_differs_from_the_data_sets(refuse, tmp_path, fashion_data_dir):
  teacher = tiny_config.write_teacher(tmp_path / "t5.npz", num_classes=5)
  config = make_config(run_arg(fashion_data_dir, teacher), num_classes=5)
  msg = refuse(config, tmp_path / "w", (train.ConfigError, ValueError), "num_classes")
  assert "10" in msg and "5" in msg


class _Marker:
  """Unpickling this creates the file `path`."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (Path.touch, (Path(self.path),))


def write_payload(path, kind, marker) -> str:
  if kind == "pickle":
    Path(path).write_bytes(pickle.dumps({"resnet/head/conv2d/bias": _Marker(marker)}))
  elif kind == "npz_with_objects":
    with open(path, "wb") as f:  # np.savez pickles object arrays into the zip.
      np.savez(f, **{"resnet/head/conv2d/bias": np.array([_Marker(marker)], dtype=object)})
  elif kind == "npy":
    with open(path, "wb") as f:
      np.save(f, np.zeros(3, np.float32))
  return str(path)


def _load_unsafely(path):
  with open(path, "rb") as f:
    if f.read(2) == b"PK":
      with np.load(path, allow_pickle=True) as z:
        return [z[k] for k in z.files]
  return pickle.loads(Path(path).read_bytes())


@pytest.mark.parametrize("kind,pattern", [
    ("pickle", "is not an .npz file.*Pickled files are refused"),
    ("npz_with_objects", "holds pickled objects, which are refused"),
    ("npy", "is not an .npz file")])
def test_pickled_or_non_npz_teacher_is_refused_unopened(refuse, tmp_path, fashion_data_dir,
                                                        kind, pattern):
  if kind != "npy":  # The payload works: unpickled, it makes its marker.
    control = tmp_path / "control.marker"
    _load_unsafely(write_payload(tmp_path / "control", kind, control))
    assert control.exists()
  marker = tmp_path / "pwned.marker"
  teacher = write_payload(tmp_path / f"teacher.{kind}", kind, marker)
  config = make_config(run_arg(fashion_data_dir, teacher))
  refuse(config, existing_run(tmp_path / "w", config), ValueError, pattern)
  assert not marker.exists(), "the trainer unpickled the checkpoint"


def test_pickled_student_init_is_refused_before_expensive_work(refuse, tmp_path,
                                                               fashion_data_dir, teacher):
  marker = tmp_path / "pwned.marker"
  init = write_payload(tmp_path / "student.pkl", "pickle", marker)
  config = make_config(run_arg(fashion_data_dir, teacher, student_init=init))
  try:
    refuse(config, tmp_path / "w", ValueError, "Pickled files are refused")
  finally:
    assert not marker.exists(), "the trainer unpickled the checkpoint"


def test_batch_size_not_divisible_by_the_devices(tmp_path, fashion_data_dir, teacher,
                                                 jax_cache):
  arg = run_arg(fashion_data_dir, teacher, batch=15)
  workdir = existing_run(tmp_path / "w", make_config(arg))
  before = snapshot(workdir)
  rc, out = run_to_end(workdir, arg, log=tmp_path / "cli.log", cache=jax_cache, devices=2,
                       env={"JAX_LOG_COMPILES": "1"})
  assert rc == 2, out[-3000:]
  assert ("config.input.batch_size=15 is not divisible by the 2 devices" in out
          and "Use a multiple of 2, e.g. 14" in out), out[-3000:]
  assert "Traceback" not in out
  assert not re.search(r"Compiling jit\((update|init_state)", out), out[-3000:]
  assert snapshot(workdir) == before


@pytest.mark.parametrize("field,pp,pattern", [
    ("input.pp_random", "random_crop(24)|flip_lrr",
     r"Unknown pp op 'flip_lrr' in pp string .* Did you mean 'flip_lr'"),
    ("input.pp", "decode|grayscale_to_rgb|resize(28)|centre_crop(24)", r"Unknown pp op 'centre_crop'"),
    ("input.pp_random", "random_crop(24, 25)|flip_lr", r"Bad arguments for .*random_crop"),
    ("input.pp_post", "value_range(-1, 1, mode='x')", r"Bad arguments for .*value_range")])
def test_unknown_preprocessing_op_or_bad_argument(refuse, tmp_path, fashion_data_dir, teacher,
                                                  field, pp, pattern):
  config = make_config(run_arg(fashion_data_dir, teacher), **{field: pp})
  msg = refuse(config, existing_run(tmp_path / "w", config), ValueError, pattern)
  assert "signature" in msg or "Known ops" in msg


def test_data_set_not_prepared(refuse, tmp_path, teacher):
  empty = tmp_path / "no_data"
  empty.mkdir()
  config = make_config(run_arg(str(empty), teacher))
  msg = refuse(config, existing_run(tmp_path / "w", config), datasets.DataNotPreparedError,
               "Data set 'fashion_mnist' is not prepared in data_dir")
  assert prepare.command("fashion_mnist", str(empty)) in msg, msg


def test_workdir_that_cannot_be_created(refuse, tmp_path, fashion_data_dir, teacher):
  # Under a regular file: no directory can be made there, even by root.
  blocker = tmp_path / "file.txt"
  blocker.write_text("keep me")
  config = make_config(run_arg(fashion_data_dir, teacher))
  msg = refuse(config, blocker / "sub", train.ConfigError, r"--workdir=\S+ is not writable")
  assert "Choose another directory or fix its permissions" in msg
  assert blocker.read_text() == "keep me"


def test_read_only_workdir(refuse, tmp_path, fashion_data_dir, teacher):
  if os.geteuid() == 0:
    pytest.skip("running as root: chmod does not stop root from writing "
                "(test_workdir_that_cannot_be_created covers root)")
  config = make_config(run_arg(fashion_data_dir, teacher))
  workdir = existing_run(tmp_path / "w", config)
  workdir.chmod(0o555)
  try:
    refuse(config, workdir, train.ConfigError, r"is not writable")
  finally:
    workdir.chmod(0o755)


def test_workdir_of_another_config_is_refused_unless_allowed(refuse, tmp_path, fashion_data_dir,
                                                             teacher):
  arg = run_arg(fashion_data_dir, teacher)
  workdir = existing_run(tmp_path / "w", make_config(arg))
  msg = refuse(make_config(arg, lr=0.02), workdir, train.ConfigError,
               "holds a run of a different config")
  assert "lr: 0.01 -> 0.02" in msg and "--config.allow_config_change=True" in msg
  # Told to reuse it, the run goes on (to the checkpointer) and records the new config.
  with pytest.raises(ReachedExpensiveWork):
    train.train(make_config(arg, lr=0.02, allow_config_change=True), str(workdir))
  assert json.loads((workdir / "config.json").read_text())["lr"] == 0.02


@pytest.mark.parametrize("mistake", [
    "missing_teacher",
    "teacher_width"])
def test_a_refused_run_does_not_block_the_corrected_one(refuse, tmp_path, fashion_data_dir,
                                                        teacher, mistake):
  workdir, arg = tmp_path / "w", run_arg(fashion_data_dir, teacher)
  if mistake == "missing_teacher":
    wrong = make_config(run_arg(fashion_data_dir, str(tmp_path / "typo.npz")))
    refuse(wrong, workdir, train.ConfigError, "does not exist")
  else:
    refuse(make_config(arg, **{"t1.width": 0.25}), workdir, ValueError,
           "does not match the model")
  train.check_workdir(str(workdir), make_config(arg))  # The corrected config is accepted.


# ---- 4. Non-finite loss -------------------------------------------------------


@pytest.fixture(scope="module")
def nan_run(reference, tmp_path_factory, jax_cache):
  """Resumes the reference's step-12 checkpoint on images scaled to +-1e38.

  The first step's loss is then non-finite (inf activations). Data keeps the
  compiled step unchanged (a huge lr would be one more compile).
  """
  path = tmp_path_factory.mktemp("nan")
  workdir = copy_run(reference, path / "w", steps=[12])
  rc, out = run_to_end(workdir, reference.arg, "--config.input.pp_post=value_range(-1e38, 1e38)",
                       "--config.allow_config_change=True", log=path / "nan.log",
                       cache=jax_cache)
  return rc, out, workdir


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(nan_run, reference):
  rc, out, workdir = nan_run
  assert rc == 3, out[-4000:]
  assert resumed_step(out) == 12
  assert re.search(r"error: Non-finite training loss -?(nan|inf) at step 13\b", out), out[-3000:]
  assert "Traceback" not in out
  assert finished_steps(workdir) == [12]
  state, _ = abstract_state(workdir / "checkpoints", 12)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
  assert max(train_rows(workdir)) == 12  # Nothing non-finite was logged.
  assert not (workdir / "student.npz").exists()


def test_nan_error_reports_the_last_logged_metrics(nan_run):
  rc, out, workdir = nan_run
  m = re.search(r"Last logged metrics: (\{.*?\})\. The last good", out)
  assert m, out[-3000:]
  last = json.loads(m[1])
  assert last.get("train/loss") == train_rows(workdir)[12]["train/loss"], last
