"""scripts/accelerator_check.sh and big_distill.accelerator_check, as the lent machine runs them.

The lent accelerator has jax, flax, optax and orbax but no TensorFlow, TFDS or
clu (device/KINDS.md). The dry run here runs the script in a subprocess where
importing any of those three fails, so that the first lent GPU is never spent
on an import error.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from big_distill import versions
from tests import helpers

REPO = Path(__file__).resolve().parents[1]
ABSENT = ("tensorflow", "tensorflow_datasets", "clu")


def _without(tmp_path: Path, names=ABSENT) -> Path:
  """A folder whose sitecustomize.py makes importing `names` fail, as on the device."""
  d = tmp_path / "no_tf"
  d.mkdir()
  (d / "sitecustomize.py").write_text(textwrap.dedent(f"""
      import importlib.abc, sys
      class _Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] in {tuple(names)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent, as on the device)",
                                      name=name)
          return None
      sys.meta_path.insert(0, _Absent())
      """))
  return d


def test_dry_run_on_a_machine_without_tensorflow(tmp_path):
  # The tests' XLA flags (conftest's TEST_XLA_FLAGS: LLVM -O0 and XLA:CPU's
  # older elemental emitters, which compile these programs ~3x faster here,
  # the flowers step: 15.7 -> 5.4 CPU-s; one CPU device): the
  # dry run compiles far more than it runs (15 programs), and what it checks
  # (the code path, the imports, the JSON it writes, no recompiles) does not
  # depend on how XLA emits code for the CPU.
  env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(_without(tmp_path)),
         "BD_WHEEL_SITE": str(tmp_path / "site"), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": helpers.xla_flags(1)}
  out = tmp_path / "out"
  r = subprocess.run(["bash", str(REPO / "scripts" / "accelerator_check.sh"), "--dry_run",
                      f"--out={out}"], env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  text = r.stdout + r.stderr
  # The versions it found come first, TensorFlow's absence said once.
  assert any(l.startswith("jax ") for l in r.stdout.splitlines())
  assert "tensorflow           absent" in r.stdout and "clu                  absent" in r.stdout
  result = json.loads((out / "accelerator_check.json").read_text())
  assert result["dry_run"] and result["platform"] == "cpu"
  assert len(result["steps"]) >= 3  # ImageNet, Flowers, and the ViT teacher step.
  for name, step in result["steps"].items():
    assert step["images_per_s"] > 0 and step["flops_per_step"] > 0, name
    assert step["recompiles_after_first_call"] == 0, name
    assert "256x256" in step["peak_source"], name  # The dry run's small CPU matmul.
  # The input part needs tf.data: skipped, with one line saying why.
  assert result["input"]["skipped"].startswith("no TensorFlow here")
  assert sum("input pipeline: skipped" in l for l in text.splitlines()) == 1


def test_versions_flag_what_is_outside_the_tested_range(monkeypatch):
  ranges = versions.tested_ranges()
  assert ranges["jax"] and ranges["flax"] and ranges["orbax-checkpoint"]
  real = versions.version
  monkeypatch.setattr(versions, "version",
                      lambda d: {"jax": "99.0.0", "clu": None}.get(d, real(d)) if d in ("jax", "clu")
                      else real(d))
  lines = versions.report()
  jax_line = next(l for l in lines if l.startswith("jax "))
  assert "99.0.0" in jax_line and "untested" in jax_line and ranges["jax"] in jax_line
  assert any(l.startswith("clu") and "absent" in l for l in lines)
  flax_line = next(l for l in lines if l.startswith("flax "))
  assert "untested" not in flax_line


def test_wheels_script_names_only_what_the_device_lacks():
  # Everything the step imports is on the device but ml-collections (KINDS.md);
  # the wheels must be pinned to the version this repository tests.
  text = (REPO / "scripts" / "device_wheels.sh").read_text()
  pinned = [w for w in text.split('wheels=(')[1].split(")")[0].split() if w]
  assert pinned == ['"ml-collections==1.1.0"']
  assert versions.in_range("1.1.0", versions.tested_ranges()["ml-collections"])
