"""The export command (big_distill.export): a finished run's student in another layout."""

import json
import re
import os

import jax
import numpy as np
import pytest

from big_distill import export
from big_distill import model_set
from big_distill.models import bit
from tests import helpers

STUDENT = dict(depth=26, width=0.125)


def _finished_run(path, num_classes=3):
  """A workdir as the trainer leaves it: config.json and a BiT student.npz."""
  model = bit.Model(num_classes=num_classes, **STUDENT)
  shapes = model_set.variable_shapes(model, 32)
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(dict(student_name="bit", student=STUDENT, num_classes=num_classes,
                   student_res=32), f)
  bit.save(variables, os.path.join(path, "student.npz"))
  return model, variables


def _run(monkeypatch, capsys, *argv):
  capsys.readouterr()
  helpers.run_main(export, ["export", *argv], monkeypatch)
  return capsys.readouterr().out


def test_round_trip_through_both_layouts(tmp_path, monkeypatch, capsys):
  """bit layout (student.npz) -> big_vision layout -> bit.load: the same arrays."""
  run = str(tmp_path / "run")
  model, variables = _finished_run(run)
  out = _run(monkeypatch, capsys, f"--workdir={run}", "--layout=big_vision")
  path = os.path.join(run, "student_big_vision.npz")
  assert f"Wrote {path}" in out
  arrays = bit.read_npz(path)
  assert "head/kernel" in arrays and not any(k.startswith("resnet/") for k in arrays)
  back = bit.load(jax.tree.map(np.zeros_like, variables), path, head_mismatch="error",
                  model=model)
  jax.tree.map(np.testing.assert_array_equal, back, variables)
  # The default layout is the family's first (student.npz's own), to --out.
  out_path = str(tmp_path / "exported.npz")
  _run(monkeypatch, capsys, f"--workdir={run}", f"--out={out_path}")
  assert set(bit.read_npz(out_path)) == set(bit.read_npz(os.path.join(run, "student.npz")))


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist or is not a directory"),
    ("not_a_run", "has no config.json: it is not the workdir of a run"),
    ("unfinished", "has no student.npz: that run has not finished"),
    ("layout", r"--layout=timm: the student's family \('bit'\) has no such layout. "
               "Its layouts: bit, big_vision."),
    ("wrong_config", "student.npz.* has a head for 3 classes, the model has num_classes=5"),
])
def test_bad_input_is_one_error_line(case, match, tmp_path, monkeypatch, capsys):
  run = tmp_path / "run"
  argv = [f"--workdir={run}"]
  if case == "not_a_run":
    run.mkdir()
  elif case == "unfinished":
    _finished_run(str(run))
    os.remove(run / "student.npz")
  elif case == "layout":
    _finished_run(str(run))
    argv.append("--layout=timm")
  elif case == "wrong_config":  # config.json says 5 classes; student.npz has 3.
    _finished_run(str(run))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "num_classes": 5}))
  with pytest.raises(SystemExit) as e:
    _run(monkeypatch, capsys, *argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("big_distill.export: error: ")
  assert re.search(match, err[0]), err[0]
  assert not (run / "student_timm.npz").exists()
