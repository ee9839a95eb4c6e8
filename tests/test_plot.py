"""Tests for big_distill.plotting, scripts/plot_metrics.py and the launch scripts.

The launch scripts are run for real with fake `gcloud`, `srun` and venv
`python` executables that record what they were given, so no cloud or
cluster is needed.
"""

import json
import math
import os
import shlex
import struct
import subprocess
import sys

import pytest

from big_distill import plotting
from tests.helpers import write_run as _write_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
TPU = os.path.join(SCRIPTS, "launch_tpu_pod.sh")
SLURM = os.path.join(SCRIPTS, "slurm_gpu.sbatch")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Arguments that break naive quoting on their way through two shells.
NASTY_ARGS = ["--config=configs/flowers_r50.py:variant=fast",
              "--config.input.pp=decode|resize(128) it's \"$HOME\" `id` a&b \\n",
              "--config.lr=0.01"]


@pytest.fixture
def runs(tmp_path):
  _write_run(tmp_path / "fm_30ep", 30)
  # The trainer (big_distill.metrics) logs the epoch as progress/epoch.
  _write_run(tmp_path / "fm_100ep", 100, evals=("test",), epoch_key="progress/epoch")
  return [str(tmp_path / "fm_30ep"), str(tmp_path / "fm_100ep")]


def _check_png(path):
  with open(path, "rb") as f:
    data = f.read()
  assert data[:8] == PNG_MAGIC, path
  width, height = struct.unpack(">II", data[16:24])  # The IHDR chunk.
  assert width >= 400 and height >= 300, (path, width, height)
  assert len(data) > 10_000, (path, len(data))  # Lines, labels and legend, not a blank page.


# ---- big_distill.plotting ----------------------------------------------------

def test_plot_writes_three_pngs(runs, tmp_path):
  out = tmp_path / "figures"
  paths = plotting.plot(runs, str(out))
  assert paths == [str(out / f"{n}.png") for n in ("accuracy", "distance", "train_loss")]
  for p in paths:
    _check_png(p)


def test_plot_defaults_to_first_workdir_and_step_axis(runs):
  paths = plotting.plot(runs[1], x="step", metrics=["accuracy", "train/lr"])
  assert paths == [os.path.join(runs[1], "accuracy.png"), os.path.join(runs[1], "train_lr.png")]
  for p in paths:
    _check_png(p)
  with pytest.raises(ValueError, match="x='time'"):
    plotting.plot(runs, x="time")


def test_teacher_lines_and_labels(runs):
  fig, why = plotting._accuracy(plotting._Runs(runs, "epoch"))  # pylint: disable=protected-access
  assert why is None
  labels = fig.axes[0].get_legend_handles_labels()[1]
  assert labels == ["fm_30ep test", "fm_30ep val", "fm_100ep test",
                    "teacher t1 test (0.89)", "teacher t1 val (0.88)"]


def test_teachers_that_differ_get_a_line_per_run(tmp_path):
  _write_run(tmp_path / "a" / "run", 10, teacher=0.9, evals=("test",))
  _write_run(tmp_path / "b" / "run", 10, teacher=0.8, evals=("test",))
  workdirs = [str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")]
  fig, _ = plotting._accuracy(plotting._Runs(workdirs, "epoch"))  # pylint: disable=protected-access
  labels = fig.axes[0].get_legend_handles_labels()[1]
  # Equal basenames are told apart by their parent folder.
  assert labels == ["a/run test", "b/run test",
                    "a/run teacher t1 test (0.9)", "b/run teacher t1 test (0.8)"]


def test_missing_metrics_skip_their_figure(tmp_path, capsys):
  (tmp_path / "only_loss").mkdir()
  (tmp_path / "only_loss" / "metrics.jsonl").write_text(
      "\n".join(json.dumps({"step": s, "epoch": s / 4, "train/loss": 1 / s})
                for s in range(1, 9)) + "\n")
  paths = plotting.plot([str(tmp_path / "only_loss")])
  assert paths == [str(tmp_path / "only_loss" / "train_loss.png")]
  out = capsys.readouterr().out
  assert "skipping accuracy.png" in out and "skipping distance.png" in out


def test_missing_metrics_file_names_the_path(tmp_path, runs):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope" / "metrics.jsonl")):
    plotting.plot([runs[0], str(tmp_path / "nope")], str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()  # Every file is read before drawing.


# ---- scripts/plot_metrics.py ----------------------------------------------------

def test_script(runs, tmp_path):
  out = tmp_path / "out"
  r = subprocess.run([sys.executable, os.path.join(SCRIPTS, "plot_metrics.py"), *runs,
                      "--out", str(out), "--x", "step"],
                     capture_output=True, text=True, check=False, timeout=120)
  assert r.returncode == 0, r.stderr
  paths = [line for line in r.stdout.splitlines() if not line.startswith("note:")]
  assert paths == [str(out / f"{n}.png") for n in ("accuracy", "distance", "train_loss")]
  for p in paths:
    _check_png(p)

  missing = str(tmp_path / "nope")
  r = subprocess.run([sys.executable, os.path.join(SCRIPTS, "plot_metrics.py"), missing],
                     capture_output=True, text=True, check=False, timeout=120)
  assert r.returncode == 1
  assert os.path.join(missing, "metrics.jsonl") in r.stderr and "Traceback" not in r.stderr


# ---- scripts/launch_tpu_pod.sh and scripts/slurm_gpu.sbatch -------------------------

def _fake_bin(tmp_path, name, body):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  (bin_dir / name).write_text("#!/bin/bash\n" + body)
  (bin_dir / name).chmod(0o755)
  return str(bin_dir)


@pytest.fixture
def fake_gcloud(tmp_path):
  """PATH with a gcloud that records each call's arguments into tmp_path/calls/N."""
  calls = tmp_path / "calls"
  calls.mkdir()
  bin_dir = _fake_bin(tmp_path, "gcloud", f"""
n=$(ls {calls} | wc -l)
printf '%s\\0' "$@" >{calls}/$n
if [[ $4 == scp ]]; then cp "$5" {calls}/$n.tar.gz; fi
""")
  def recorded():
    return [(calls / n).read_bytes().decode().split("\0")[:-1]
            for n in sorted(os.listdir(calls), key=lambda n: int(n.split(".")[0]))
            if not n.endswith(".tar.gz")]
  return f"{bin_dir}:/usr/bin:/bin", recorded


def _run(cmd, env, **kwargs):
  return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                        timeout=60, **kwargs)


@pytest.mark.parametrize("script", [TPU, SLURM])
def test_shell_scripts_parse(script):
  r = _run(["bash", "-n", script], env={"PATH": "/usr/bin:/bin"})
  assert r.returncode == 0, r.stderr


def test_tpu_help():
  r = _run(["bash", TPU, "-h"], env={"PATH": "/usr/bin:/bin"})
  assert r.returncode == 0
  assert r.stdout.startswith("Usage: scripts/launch_tpu_pod.sh")
  for flag in ("--tpu", "--zone", "--repo", "--tarball", "--workdir", "--data-dir", "--dry-run"):
    assert flag in r.stdout


def test_tpu_fails_clearly_without_settings_and_calls_no_gcloud(fake_gcloud):
  path, recorded = fake_gcloud
  r = _run(["bash", TPU, "--", "--config=configs/flowers_r50.py"], env={"PATH": path})
  assert r.returncode == 2
  assert "missing required settings" in r.stderr
  for name in ("TPU_NAME", "TPU_ZONE", "REPO_URL", "REPO_TARBALL", "WORKDIR", "TFDS_DATA_DIR"):
    assert name in r.stderr
  env = {"PATH": path, "TPU_NAME": "pod", "TPU_ZONE": "z", "REPO_URL": "u",
         "TFDS_DATA_DIR": "gs://b/tfds"}
  for args, error in [
      (["--workdir=/local/run", "--", "--config=c.py"], "must be on GCS"),
      (["--workdir=gs://b/w"], "no --config"),
      (["--workdir=gs://b/w", "--config=c.py"], "unknown option '--config'"),
      (["--workdir=gs://b/w", "--", "--config=c.py", "--workdir=gs://b/x"], "two workdirs"),
      (["--tpu"], "--tpu needs a value"),
  ]:
    r = _run(["bash", TPU, *args], env=env)
    assert r.returncode == 2 and error in r.stderr, (args, r.stderr)
  assert recorded() == []


def test_tpu_launch_passes_arguments_through_unchanged(fake_gcloud, tmp_path):
  path, recorded = fake_gcloud
  env = {"PATH": path, "HOME": str(tmp_path)}
  r = _run(["bash", TPU, "--tpu", "pod", "--zone=us-central2-b", "--project", "proj",
            "--repo", "https://example.com/big_distill.git", "--ref", "v1",
            "--data-dir", "gs://b/tfds", "--env", "XLA_FLAGS=--a --b",
            "--", *NASTY_ARGS, "--workdir", "gs://b/runs/it's"], env=env)
  assert r.returncode == 0, r.stderr
  setup, train = recorded()
  for call in (setup, train):
    assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod"]
    assert {"--zone=us-central2-b", "--project=proj", "--worker=all"} <= set(call)
  # What the worker's login shell runs: `bash -c SCRIPT`.
  assert shlex.split(setup[-1].removeprefix("--command="))[:2] == ["bash", "-c"]
  setup_script = shlex.split(setup[-1].removeprefix("--command="))[2]
  assert "git clone" in setup_script and "'v1'" in setup_script and "jax[tpu]" in setup_script
  assert _run(["bash", "-n", "-c", setup_script], env=env).returncode == 0

  # Run the worker's training script here, against a fake venv whose python
  # records its arguments and environment.
  cmd = shlex.split(train[-1].removeprefix("--command="))
  (tmp_path / "big_distill").mkdir()
  venv_bin = tmp_path / "big_distill_venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "python").write_text(
      "#!/bin/bash\nprintf '%s\\0' \"$PWD\" \"$TFDS_DATA_DIR\" \"$XLA_FLAGS\" \"$@\" "
      f">{tmp_path}/python_args\n")
  (venv_bin / "python").chmod(0o755)
  r = _run(cmd, env=env)
  assert r.returncode == 0, r.stderr
  got = (tmp_path / "python_args").read_text().split("\0")[:-1]
  assert got == [str(tmp_path / "big_distill"), "gs://b/tfds", "--a --b",
                 "-m", "big_distill.train", *NASTY_ARGS, "--workdir", "gs://b/runs/it's"]


def test_tpu_tarball_of_a_checkout(fake_gcloud, tmp_path):
  path, recorded = fake_gcloud
  repo = tmp_path / "repo"
  repo.mkdir()
  git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run([*git, "init", "-q"], check=True)
  for name, text in [("pyproject.toml", ""), (".gitignore", "ignored.txt\n"),
                     ("tracked.py", ""), ("untracked.py", ""), ("ignored.txt", "")]:
    (repo / name).write_text(text)
  subprocess.run([*git, "add", "pyproject.toml", ".gitignore", "tracked.py"], check=True)
  r = _run(["bash", TPU, "--tpu", "pod", "--zone", "z", "--tarball", str(repo),
            "--workdir", "gs://b/w", "--data-dir", "gs://b/tfds", "--detach",
            "--", "--config=c.py"], env={"PATH": path, "HOME": str(tmp_path)})
  assert r.returncode == 0, r.stderr
  scp, setup, train = recorded()
  assert scp[3] == "scp" and scp[5] == "pod:big_distill_src.tar.gz" and "--worker=all" in scp
  listing = subprocess.run(["tar", "-tzf", str(tmp_path / "calls" / "0.tar.gz")],
                           capture_output=True, text=True, check=True).stdout.split()
  assert sorted(listing) == [".gitignore", "pyproject.toml", "tracked.py", "untracked.py"]
  assert "tar -xf" in setup[-1] and "git clone" in setup[-1]  # One script, both branches.
  assert "nohup" in train[-1] and "--workdir=gs://b/w" in train[-1]


def test_slurm_script_runs_one_task_per_gpu(tmp_path):
  # srun: one task whose CUDA_VISIBLE_DEVICES holds two GPUs; the rest of its
  # command line after the options is the per-task command.
  bin_dir = _fake_bin(tmp_path, "srun", """
while [[ $1 == --* ]]; do shift; done
CUDA_VISIBLE_DEVICES=4,6 SLURM_PROCID=0 SLURM_LOCALID=1 exec "$@"
""")
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "activate").write_text(f'export PATH="{venv}/bin:$PATH"\n')
  (venv / "bin" / "python").write_text(
      "#!/bin/bash\nprintf '%s\\0' \"$JAX_LOCAL_DEVICE_IDS\" \"$XLA_FLAGS\" \"$TFDS_DATA_DIR\" "
      f"\"$SRUN_CPUS_PER_TASK\" \"$@\" >{tmp_path}/python_args\n")
  (venv / "bin" / "python").chmod(0o755)
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "VENV": str(venv),
         "SLURM_SUBMIT_DIR": ROOT, "SLURM_CPUS_PER_TASK": "8", "XLA_FLAGS": "--mine=1"}
  r = _run(["bash", SLURM, *NASTY_ARGS], env=env)
  assert r.returncode == 0, r.stderr
  got = (tmp_path / "python_args").read_text().split("\0")[:-1]
  assert got == ["0,1", "--xla_gpu_enable_latency_hiding_scheduler=true --mine=1",
                 f"{tmp_path}/tensorflow_datasets", "8", "-m", "big_distill.train", *NASTY_ARGS]

  r = _run(["bash", SLURM, "--config=c.py"], env={**env, "VENV": str(tmp_path / "none")})
  assert r.returncode == 2 and "no virtualenv" in r.stderr
