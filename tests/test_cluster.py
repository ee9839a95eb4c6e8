"""Faults of a real cluster (issue #18): a held workdir, a full disk, a changed
device count, a dead process of a multi-process job; and the config
compatibility of a resumed workdir. (A second launch on the workdir of a
running CLI run is met by test_reliability's rerun after SIGTERM.)

The CLI runs use tests/helpers.py's machinery and conftest's uninterrupted
reference run (16 steps, checkpoints every 3), so most of them cost one
start-up each; the device-count and multi-process tests compare with other
uninterrupted runs (another shape: helpers.FOUR_DEVICE_ARG), conftest's
`four_device_run` and `two_process_run`, shared with test_multiprocess.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from big_distill import checkpoint as ckpt_lib
from big_distill import config_lib
from big_distill import parallel
from big_distill import train
from big_distill import workdir as workdir_lib
from big_distill.data import input as input_lib
from big_distill.errors import WorkdirError
from tests import tiny_config
from tests.helpers import (FOUR_DEVICE_ARG, MULTIPROCESS_ATOL, MULTIPROCESS_RTOL,
                           ReachedExpensiveWork, assert_same_as_reference, existing_run,
                           finish_job, finished_steps, free_port, make_config,
                           params_differences, read_params, resumed_step, run_arg, run_to_end,
                           snapshot, train_rows, tripwire, two_process_job, unfinished_saves,
                           wait_first_checkpoint, xla_flags)

REPO = Path(__file__).resolve().parents[1]


# ---- Config compatibility on resume -------------------------------------------


def _json(config):
  return json.loads(config.to_json_best_effort())


def test_config_diff_ignores_later_fields_at_their_default():
  new = config_lib.base()
  new.evals.test = config_lib.eval_config()
  old = _json(new)
  del old["remat_student"]            # A top-level field added later.
  del old["optim"]["shampoo_eps"]     # One in a sub-config.
  del old["evals"]["test"]["ece_bins"]  # One in an evaluator (eval_config()).
  del old["profile"]                  # A whole sub-config added later.
  assert workdir_lib.config_diff(old, _json(new)) == []


def test_config_diff_reports_later_fields_not_at_their_default_and_changes():
  new = config_lib.base()
  new.evals.test = config_lib.eval_config()
  old = _json(new)
  del old["remat_student"], old["optim"]["shampoo_eps"], old["evals"]["test"]["ece_bins"]
  new.remat_student = True
  new.optim.shampoo_eps = 1e-3
  new.evals.test.ece_bins = 10
  new.lr = 0.5
  new.allow_config_change = True  # Never a difference.
  assert workdir_lib.config_diff(old, _json(new)) == [
      "evals.test.ece_bins: <absent> -> 10",
      "lr: 0.003 -> 0.5",
      "optim.shampoo_eps: <absent> -> 0.001",
      "remat_student: <absent> -> True"]


def test_config_diff_reads_input_cache_raw_as_the_cache_mode_it_was():
  """Runs recorded before input.cache existed resume as the mode they ran in."""
  for cache_raw, mode in ((True, "encoded"), (False, "none")):
    new = config_lib.base()
    new.input.cache = mode
    old = _json(new)
    del old["input"]["cache"], old["input"]["device_cache_gib"]
    old["input"]["cache_raw"] = cache_raw
    assert workdir_lib.config_diff(old, _json(new)) == []
    new.input.cache = "decoded"  # Another mode is another run.
    assert workdir_lib.config_diff(old, _json(new)) == [f"input.cache: {mode!r} -> 'decoded'"]


def test_config_diff_fields_unknown_to_base_and_removed_fields_differ():
  base = _json(config_lib.base())
  new = {**base, "t2_res": 224}  # Not in base(): no default to fall back on.
  old = {k: v for k, v in base.items() if k != "seed"}
  assert workdir_lib.config_diff(base, new) == ["t2_res: <absent> -> 224"]
  assert workdir_lib.config_diff(base, old) == ["seed: 0 -> <absent>"]


def test_check_workdir_resumes_a_run_recorded_before_a_field_existed(tmp_path, fashion_data_dir):
  config = make_config(run_arg(fashion_data_dir, ""))
  recorded = _json(config)
  del recorded["remat_student"]
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  train.check_workdir(str(tmp_path), config)  # Accepted.
  changed = make_config(run_arg(fashion_data_dir, ""), remat_student=True)
  with pytest.raises(train.ConfigError, match=r"remat_student: <absent> -> True"):
    train.check_workdir(str(tmp_path), changed)


# ---- The workdir lock ---------------------------------------------------------


HOLD = """
import sys, time
from big_distill import workdir
lock = workdir.WorkdirLock(sys.argv[1], lease_s=float(sys.argv[2]), mode=sys.argv[3]).acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder():
  """holder(workdir, mode, lease_s): another process that holds the workdir."""
  procs = []

  def start(workdir, mode="flock", lease_s=120.0):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir), str(lease_s), mode],
                         env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(p)
    assert p.stdout.readline().strip() == "held", "the holder did not start"
    return p

  yield start
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait()


def test_lock_refuses_a_second_holder_naming_it_and_a_killed_holder_releases(tmp_path, holder):
  p = holder(tmp_path)
  with pytest.raises(WorkdirError) as e:
    workdir_lib.WorkdirLock(str(tmp_path)).acquire()
  msg = str(e.value)
  assert f"is in use by process {p.pid} on host {socket.gethostname()}" in msg, msg
  assert "use another --workdir" in msg
  p.send_signal(signal.SIGKILL)
  p.wait()
  lock = workdir_lib.WorkdirLock(str(tmp_path)).acquire()  # Not stuck after kill -9.
  assert lock.held and json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
  lock.release()
  assert not lock.held


def test_a_later_lock_of_the_same_process_takes_over_its_earlier_one(tmp_path):
  first = workdir_lib.acquire(str(tmp_path))
  second = workdir_lib.acquire(str(tmp_path))  # E.g. train() again, in a notebook.
  assert second.held and not first.held
  second.release()


def test_lease_refuses_while_renewed_and_expires_when_its_holder_died(tmp_path, holder):
  lease = 2.0
  p = holder(tmp_path, "lease", lease)
  time.sleep(lease * 1.5)  # Past one lease: only renewals keep it.
  with pytest.raises(WorkdirError, match=rf"process {p.pid} on host .*renewed \d+ s ago"):
    workdir_lib.WorkdirLock(str(tmp_path), lease_s=lease, mode="lease").acquire()
  p.send_signal(signal.SIGKILL)
  p.wait()
  # Same host and a dead pid: taken over at once, without waiting for the lease.
  lock = workdir_lib.WorkdirLock(str(tmp_path), lease_s=lease, mode="lease").acquire()
  assert json.loads((tmp_path / "lock").read_text())["token"] == lock.token
  lock.release()
  assert not (tmp_path / "lock").exists()
  # Another host's lock: refused until its lease expires, then taken over.
  stale = {"host": "elsewhere", "pid": 1, "token": "x", "renewed": time.time(),
           "lease_s": lease, "started": "then", "command": "train"}
  (tmp_path / "lock").write_text(json.dumps(stale))
  with pytest.raises(WorkdirError, match="process 1 on host elsewhere"):
    workdir_lib.WorkdirLock(str(tmp_path), lease_s=lease, mode="lease").acquire()
  time.sleep(lease + 0.5)
  lock = workdir_lib.WorkdirLock(str(tmp_path), lease_s=lease, mode="lease").acquire()
  lock.release()


TWO_PROCESSES = """
import json, os, sys, time
from big_distill import errors, parallel, workdir
port, index, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
parallel.initialize_distributed(f"localhost:{port}", 2, index, peer_timeout=120)
for attempt in range(2):
  try:
    out = "held" if workdir.acquire(path).held else "not held"
  except errors.WorkdirError as e:
    out = str(e)
  print("outcome:", json.dumps(out), flush=True)
  while attempt == 0 and not os.path.exists(path + ".go"):
    time.sleep(0.05)
parallel.finished()
"""


def _outcomes(lines, n):
  """The first `n` outcomes a TWO_PROCESSES process printed (gloo prints too)."""
  out = []
  for line in lines:
    if line.startswith("outcome: "):
      out.append(json.loads(line[len("outcome: "):]))
      if len(out) == n:
        break
  return out + ["<no outcome>"] * (n - len(out))


def test_every_process_of_a_job_gets_process_0s_lock_outcome(tmp_path, holder):
  """Refused on every process while another run holds the workdir; then held
  by process 0 alone (the others are the same run)."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  p = holder(workdir)
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", XLA_FLAGS=xla_flags(1))
  port = free_port()
  procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, str(port), str(i),
                             str(workdir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    first = [_outcomes(iter(proc.stdout.readline, ""), 1)[0] for proc in procs]
    p.send_signal(signal.SIGKILL)  # The holder dies: the workdir is free.
    p.wait()
    Path(str(workdir) + ".go").touch()
    outs = [proc.communicate(timeout=300) for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for proc, (_, stderr) in zip(procs, outs):
    assert proc.returncode == 0, stderr[-3000:]
  for refused in first:
    assert f"is in use by process {p.pid} on host {socket.gethostname()}" in refused, first
  assert first[0] == first[1]
  assert [_outcomes(out.splitlines(), 1) for out, _ in outs] == [["held"], ["not held"]], outs


def test_held_workdir_is_refused_before_expensive_work_writing_nothing(
    tmp_path, fashion_data_dir, monkeypatch, holder):
  monkeypatch.setattr(train.ckpt_lib, "Checkpointer", tripwire("the checkpointer"))
  monkeypatch.setattr(input_lib, "make_train_dataset", tripwire("the input pipeline"))
  teacher = tiny_config.write_teacher(tmp_path / "t.npz")
  config = make_config(run_arg(fashion_data_dir, teacher))
  workdir = existing_run(tmp_path / "w", config)
  p = holder(workdir)
  before = snapshot(workdir)
  with pytest.raises(WorkdirError, match=f"in use by process {p.pid} on host"):
    train.train(config, str(workdir))
  assert snapshot(workdir) == before
  p.send_signal(signal.SIGKILL)
  p.wait()
  with pytest.raises(ReachedExpensiveWork):  # The holder died: the workdir is free.
    train.train(config, str(workdir))


# A second launch on the workdir of a running CLI run: refused, writing nothing,
# and the run finishes as if alone. That run is test_reliability's rerun after
# SIGTERM (test_sigterm_saves_where_it_stopped_and_rerun_is_bitwise_exact),
# compared bitwise with the reference anyway: one run fewer than a test here.


# ---- A full disk during a checkpoint save ---------------------------------------


def _du(path) -> int:
  return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def test_disk_full_during_a_save_stops_clearly_and_resumes_after_space_is_freed(
    reference, small_disk, jax_cache, tmp_path):
  # Room for the run's files and the step-3 checkpoint, not for the step-6 one.
  ckpt = _du(reference.workdir / "checkpoints" / "12")
  other = _du(reference.workdir) - _du(reference.workdir / "checkpoints")
  disk = small_disk(int(other + 1.5 * ckpt) // 4096 * 4096)
  workdir = disk / "w"
  rc, out = run_to_end(workdir, reference.arg, log=tmp_path / "full.log", cache=jax_cache)
  assert rc == ckpt_lib.DISK_FULL_EXIT_CODE == 74, out[-4000:]
  errors = [l for l in out.splitlines() if "error:" in l]
  assert len(errors) == 1 and "Traceback" not in out, out[-4000:]
  m = re.search(r"error: No space left on device while saving the checkpoint of step (\d+) "
                r"to (\S+) \(it needs about [\d.]+ [KM]iB, [\d.]+ [KM]iB free now\)\. The previous "
                r"checkpoint \(step 3\) and metrics.jsonl are intact", errors[0])
  assert m and m[2] == str(workdir / "checkpoints" / m[1]), errors[0]
  assert "rerun the same command to resume" in errors[0]
  assert finished_steps(workdir) == [3] and unfinished_saves(workdir) == []
  rows = train_rows(workdir)  # Every line whole, each step once.
  assert min(rows) == 1 and max(rows) >= 3
  assert all(rows[s] == reference.rows[s] for s in rows)
  small_disk(64 << 20, remount=True)  # Space freed.
  rc, out = run_to_end(workdir, reference.arg, log=tmp_path / "rerun.log", cache=jax_cache)
  assert rc == 0, out[-4000:]
  assert resumed_step(out) == 3
  assert_same_as_reference(reference, workdir, "after a full disk")


# ---- Resuming on another number of devices ---------------------------------------


DEV_STEPS = FOUR_DEVICE_ARG["steps"]
DEV_RESUME = 2  # Resumed from step 2 (the later checkpoints removed): 2 steps on the new devices.


def test_resume_on_2_and_8_devices_of_a_4_device_run(four_device_run, tmp_path, jax_cache):
  # conftest's 4-device run (64px, SGD, the tests' -O0, as test_multiprocess's
  # comparison): there the device count moves the result by float rounding
  # only (~1e-7 relative measured there; at -O0 on a 2 vCPU AMD EPYC, losses
  # within 3e-7 relative and parameters within 3e-7 of MULTIPROCESS_RTOL's
  # scale, two runs).
  arg, full = four_device_run.arg, four_device_run.workdir
  out = four_device_run.log.read_text(errors="replace")
  assert "mesh {'data': 4, 'fsdp': 1} over 4 devices" in out
  assert DEV_RESUME in finished_steps(full)
  ref_params, ref_rows = read_params(full), train_rows(full)
  for devices in (2, 8):
    workdir = tmp_path / f"on{devices}"
    shutil.copytree(full, workdir, ignore=shutil.ignore_patterns("student.npz"))
    for step in finished_steps(workdir):
      if step > DEV_RESUME:
        shutil.rmtree(workdir / "checkpoints" / str(step))
    rc, out = run_to_end(workdir, arg, log=tmp_path / f"on{devices}.log", cache=jax_cache,
                         devices=devices)
    assert rc == 0, out[-4000:]
    assert resumed_step(out) == DEV_RESUME
    assert (f"The device count changed: the checkpoint at step {DEV_RESUME} was written on 4 "
            f"devices (1 processes), this run has {devices} devices (1 processes)") in out, \
        out[-4000:]
    assert f"mesh {{'data': {devices}, 'fsdp': 1}}" in out
    rows = train_rows(workdir)
    assert sorted(rows) == sorted(ref_rows)
    for s in range(DEV_RESUME + 1, DEV_STEPS + 1):  # The same batches: the same losses.
      np.testing.assert_allclose(rows[s]["train/loss"], ref_rows[s]["train/loss"], rtol=1e-5)
    params = read_params(workdir)
    assert sorted(params) == sorted(ref_params)
    for k in params:
      np.testing.assert_allclose(params[k], ref_params[k], rtol=MULTIPROCESS_RTOL, atol=MULTIPROCESS_ATOL,
                                 err_msg=f"{devices} devices: {k}")
    ckpts = ckpt_lib.Checkpointer(str(workdir / "checkpoints"))
    try:
      assert ckpts.saved_topology(DEV_STEPS) == {"device_count": devices, "process_count": 1}
      assert ckpts.saved_topology(DEV_RESUME) == {"device_count": 4, "process_count": 1}
    finally:
      ckpts.close()


# ---- A dead process in a 2-process job -------------------------------------------


# The uninterrupted job is conftest's `two_process_run` (helpers.FOUR_DEVICE_ARG,
# shared with test_multiprocess). The kill comes as soon as the first
# checkpoint (step 1) is finished, during step 2 (the save is asynchronous),
# and process 0 stops at the next step's collectives: the steps and saves of
# 2, 3 and 4 leave it mid-run (the test asserts so; measured on a loaded 2 vCPU
# AMD EPYC, 3 s from the first checkpoint's finish to the last one's).
MP_STEPS = FOUR_DEVICE_ARG["steps"]
PEER_TIMEOUT_S = 10  # What the test sets; the default is parallel.DEFAULT_PEER_TIMEOUT_S.


def _job(workdir, arg, tag, tmp_path):
  """The 2 processes (2 CPU devices each) of one jax.distributed job, over gloo
  (helpers.two_process_job: no compilation cache, each job compiles everything)."""
  return two_process_job(workdir, arg, tag=tag, folder=tmp_path,
                         env={parallel.PEER_TIMEOUT_ENV: str(PEER_TIMEOUT_S)})


def test_a_killed_process_stops_the_job_within_the_timeout_and_a_rerun_is_exact(
    tmp_path, fashion_data_dir, two_process_run):
  # The uninterrupted job saves as the trainer does by default (replica-parallel);
  # the cut job and its rerun save each array from one replica, which spares
  # them the slicing programs' compiling (~10 s a process at a job's first
  # save). How a job saves changes none of its numbers: the rerun must still
  # equal the uninterrupted job bitwise.
  whole = two_process_run.workdir
  arg = run_arg(fashion_data_dir, two_process_run.teacher,
                **dict(FOUR_DEVICE_ARG, replica_parallel=0))
  assert arg == two_process_run.arg.replace("replica_parallel=1", "replica_parallel=0")

  cut = tmp_path / "cut"
  job = _job(cut, arg, "cut", tmp_path)
  try:
    wait_first_checkpoint(job[0])
    job[1].proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    rc = job[0].wait(timeout=PEER_TIMEOUT_S + 300)
    took = time.monotonic() - killed_at
  finally:
    for cli in job:
      if cli.proc.poll() is None:
        cli.proc.kill()
        cli.proc.wait()
  out = job[0].output
  print(f"\nprocess 0 exited {took:.1f} s after process 1 was killed (timeout "
        f"{PEER_TIMEOUT_S} s); checkpoints {finished_steps(cut)}")
  assert rc == parallel.LOST_PROCESS_EXIT_CODE == 75, out[-4000:]
  errors = [l for l in out.splitlines() if "error:" in l]
  assert len(errors) == 1, out[-4000:]
  assert re.search(rf"error: Lost process 1 of 2 \(pid {job[1].proc.pid} on host "
                   rf"{re.escape(socket.gethostname())}\): no heartbeat for \d+ s", errors[0]), \
      errors[0]
  assert "Rerun all 2 processes with the same command" in errors[0]
  # Bounded: the timeout, give or take a heartbeat period (process 0 dates the
  # peer's last beat when it reads it, up to one period before or after the
  # kill), plus a loaded machine's delays.
  period = parallel.heartbeat_period(PEER_TIMEOUT_S)
  assert PEER_TIMEOUT_S - period <= took < PEER_TIMEOUT_S + 60, took
  assert not (cut / "student.npz").exists()  # It was stopped mid-run.
  saved = finished_steps(cut)
  assert saved and saved[-1] < MP_STEPS, saved

  rerun = _job(cut, arg, "rerun", tmp_path)
  finish_job(rerun)
  assert resumed_step(rerun[0].output) == saved[-1]
  diff = params_differences(read_params(whole), read_params(cut))
  assert not diff, f"student.npz differs from the uninterrupted 2-process run in {diff[:5]}"
  rows, ref = train_rows(cut), train_rows(whole)
  assert sorted(rows) == sorted(ref) == list(range(1, MP_STEPS + 1))
  assert all(rows[s] == ref[s] for s in rows)
