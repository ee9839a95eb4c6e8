"""config_lib.py: config arguments, durations in any unit, the base config."""

import json
import os
from pathlib import Path
import subprocess
import sys

from absl import flags
import ml_collections as mlc
from ml_collections import config_flags
import pytest

from big_distill import config_lib
from big_distill import errors
from big_distill import workdir as workdir_lib

REPO = Path(__file__).resolve().parents[1]


def test_parse_arg_types_and_bare_words():
  a = config_lib.parse_arg("variant=long, runlocal,res=160,lr=0.5", variant="fast",
                           runlocal=False, res=224, lr=1.0, name="x")
  assert a.to_dict() == dict(variant="long", runlocal=True, res=160, lr=0.5, name="x")
  assert isinstance(a.res, int) and isinstance(a.lr, float)
  assert config_lib.parse_arg(None, res=224).res == 224
  assert config_lib.parse_arg("", res=224).res == 224
  assert config_lib.parse_arg("flag=false", flag=True).flag is False
  assert config_lib.parse_arg("flag=1", flag=False).flag is True


@pytest.mark.parametrize("arg,match", [
    ("varient=fast", r"Unknown config argument 'varient' in 'varient=fast'. Known arguments: "
                     r"res, runlocal, variant"),
    ("runlocal=maybe", r"runlocal='maybe': expected true or false"),
    ("res=big", r"res='big' in 'res=big': expected an integer"),
])
def test_parse_arg_errors_name_the_argument(arg, match):
  with pytest.raises(errors.ConfigError, match=match):
    config_lib.parse_arg(arg, variant="fast", runlocal=False, res=224)


def _durations(**fields):
  c = mlc.ConfigDict()
  for unit in ("steps", "epochs", "examples"):
    c[f"total_{unit}"] = fields.get(f"total_{unit}")
  return c


@pytest.mark.parametrize("fields,want", [
    (dict(total_steps=7), 7),
    # 1,020 examples at batch 512: 2.5 epochs = 2,550 examples = 5 steps (rounded up).
    (dict(total_epochs=2.5), 5),
    (dict(total_examples=1025), 3),  # ceil(1025 / 512)
    (dict(total_examples=1024), 2),
    (dict(total_steps=0), None),  # 0 unsets, as None does.
    (dict(), None),
])
def test_durations_in_steps_epochs_examples(fields, want):
  got = config_lib.steps("total", _durations(**fields), num_examples=1020, batch_size=512)
  assert got == want


def test_negative_means_at_the_end():
  c = _durations(total_steps=-1)
  assert config_lib.steps("total", c, num_examples=None, batch_size=8, total_steps=40) == 40
  c = _durations(total_epochs=-1.0)
  assert config_lib.steps("total", c, num_examples=10, batch_size=8, total_steps=40) == 40


def test_default_when_unset():
  c = _durations()
  assert config_lib.steps("total", c, num_examples=10, batch_size=8, default=3) == 3


def test_a_duration_given_twice_is_an_error():
  c = _durations(total_steps=10, total_epochs=2.0)
  with pytest.raises(errors.ConfigError, match=r"duration 'total' twice: total_steps=10, "
                     r"total_epochs=2.0.*--config.total_steps=0"):
    config_lib.steps("total", c, num_examples=10, batch_size=8)


def test_epochs_need_the_data_size():
  with pytest.raises(errors.ConfigError, match="total_epochs needs the number of training"):
    config_lib.steps("total", _durations(total_epochs=1.0), num_examples=None, batch_size=8)


def test_base_config_is_locked_against_typos():
  c = config_lib.base()
  c.lock()
  with pytest.raises(AttributeError):
    c.lrr = 1.0
  # Every duration comes in three units, evaluator periods included.
  for prefix in ("total", "log_training", "ckpt"):
    assert all(f"{prefix}_{u}" in c for u in ("steps", "epochs", "examples"))
  e = config_lib.eval_config()
  assert all(f"log_{u}" in e for u in ("steps", "epochs", "examples"))


# ---- Fields without a default ----------------------------------------------------


def test_base_leaves_the_data_and_model_fields_unset():
  c = config_lib.base()
  c.evals.val = config_lib.eval_config()
  unset = config_lib.missing(c)
  assert set(unset) == {
      "num_classes", "input.data.name", "input.data.split", "input.pp_random",
      "input.pp_fixed", "input.pp_post", "student_name", "student", "student_res",
      "t1_name", "t1", "t1_res", "t1_init",
      "evals.val.data.name", "evals.val.data.split", "evals.val.pp"}
  with pytest.raises(errors.ConfigError) as e:
    config_lib.check_required(c)
  message = str(e.value)
  assert len(message.splitlines()) == 1
  for field, what in unset.items():  # Each one, and what to set there.
    assert f"config.{field} ({what})" in message
  assert "e.g. 102" in message and "e.g. dict(depth=50, width=1.0)" in message


def test_a_run_without_teachers_needs_no_teacher_fields():
  c = config_lib.base()
  c.teachers = ()
  c.num_classes, c.student_name, c.student, c.student_res = 10, "bit", dict(depth=26), 32
  c.input.data.name, c.input.data.split = "fashion_mnist", "train"
  c.input.pp_random = c.input.pp_fixed = c.input.pp_post = "resize(32)"
  assert config_lib.missing(c) == {}
  c.input.pp_post = ""  # Empty is unset too.
  assert list(config_lib.missing(c)) == ["input.pp_post"]


def test_every_config_sets_its_fields():
  for path in sorted((REPO / "configs").rglob("*.py")):
    if path.name != "__init__.py" and not path.name.startswith("custom"):  # data=: test_configs.
      for arg in ("", ":runlocal"):
        config_lib.check_required(config_lib.load_config(f"{path}{arg}"), f"{path}{arg}")


def test_resuming_a_run_recorded_when_base_gave_t1_flowers_teacher():
  """A run without teachers recorded t1_name='bit', t1=R152x2, t1_res=128 (base()'s
  old defaults); the same config now leaves them unset: no difference."""
  new = config_lib.load_config(f"{REPO}/configs/fmnist_teacher.py:runlocal")
  new_json = json.loads(new.to_json_best_effort())
  old = {**new_json, "t1_name": "bit", "t1": {"depth": 152, "width": 2.0}, "t1_res": 128}
  assert workdir_lib.config_diff(old, new_json) == []
  # A run that has the teacher still compares its fields.
  assert workdir_lib.config_diff({**old, "teachers": ["t1"]}, {**new_json, "teachers": ["t1"]})


def test_a_config_loads_from_any_working_directory(tmp_path):
  """By absolute path, with big_distill installed and the repository not on the path."""
  site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
  site.mkdir()
  elsewhere.mkdir()
  (site / "big_distill").symlink_to(REPO / "big_distill")
  code = f"""
import sys
from absl import flags
from ml_collections import config_flags
from big_distill import config_lib
configs = {str(REPO / "configs")!r}
for arg in ("flowers_r50.py:fixed=cc,runlocal", "teachers/pets.py", "fmnist_teacher.py",
            "fmnist_other_images.py:source=digits,runlocal", "fmnist_mobilenet.py"):
  config_lib.check_required(config_lib.load_config(f"{{configs}}/{{arg}}"))
# As a command reads --config=.
config_flags.DEFINE_config_file("config")
config_lib.flags_parser("cmd")(["cmd", f"--config={{configs}}/flowers_r50.py:runlocal"])
assert "configs" not in sys.modules, sys.modules["configs"]
print(flags.FLAGS.config.num_classes, flags.FLAGS.config.t1_init)
"""
  env = {**os.environ, "PYTHONPATH": str(site)}
  out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                       capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["102", "workdirs/teachers/flowers_local/student.npz"]
  # The configs that a command imports as `configs.X` (from the repository root)
  # are no longer needed for that: no config imports the `configs` package.
  for path in (REPO / "configs").rglob("*.py"):
    assert "from configs" not in path.read_text() and "import configs" not in path.read_text()


def test_load_config_errors():
  with pytest.raises(errors.ConfigError, match="no such file"):
    config_lib.load_config("configs/no_such_config.py")
  with pytest.raises(errors.ConfigError, match="Unknown variant='slow'"):
    config_lib.load_config(f"{REPO}/configs/flowers_r50.py:variant=slow")


# ---- The commands' flag parsing -------------------------------------------------


@pytest.fixture
def parse(tmp_path, monkeypatch, capsys):
  """config_lib.flags_parser on a config file whose get_config() checks its argument."""
  path = tmp_path / "a_config.py"
  path.write_text("from big_distill import config_lib\n\n"
                  "def get_config(arg=None):\n"
                  "  a = config_lib.parse_arg(arg, variant='fast')\n"
                  "  c = config_lib.base()\n"
                  "  c.seed = 1\n"
                  "  return c\n")

  def run(*args):
    argv = ["cmd", f"--config={path}", *args]
    if args and args[0].startswith(":"):
      argv = ["cmd", f"--config={path}{args[0]}", *args[1:]]
    monkeypatch.setattr(sys, "argv", argv)
    values = flags.FlagValues()
    monkeypatch.setattr(flags, "FLAGS", values)
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    with pytest.raises(SystemExit) as e:
      config_lib.flags_parser("big_distill.cmd")(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    return err
  return run


def test_config_file_argument_error_is_its_own_message(parse):
  err = parse(":varient=long")
  assert err.startswith("big_distill.cmd: error: Unknown config argument 'varient' in "
                        "'varient=long'. Known arguments: variant."), err


def test_unknown_override_names_the_field(parse):
  err = parse("--config.lrr=1")
  assert "big_distill.cmd: error: unknown config field in --config.lrr=1" in err
  assert 'Did you mean "lr"' in err


def test_unset_fields_are_one_error_before_anything_runs(parse):
  err = parse("--config.num_classes=3")
  assert err.startswith("big_distill.cmd: error: --config=") and "a_config.py leaves 12 field(s)" in err
  assert "config.input.pp_random (" in err and "config.t1_init (" in err
  assert "config.num_classes" not in err  # Set on the command line.


def test_data_error_of_the_config_file_is_its_own_message(tmp_path, monkeypatch, capsys):
  """A UserError that is no ValueError reaches flags_parser unwrapped."""
  path = tmp_path / "data_config.py"
  path.write_text("from big_distill import errors\n\n"
                  "def get_config(arg=None):\n"
                  "  raise errors.DataError('Data set my_data is not prepared in /x.')\n")
  argv = ["cmd", f"--config={path}"]
  monkeypatch.setattr(sys, "argv", argv)
  values = flags.FlagValues()
  monkeypatch.setattr(flags, "FLAGS", values)
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  with pytest.raises(SystemExit):
    config_lib.flags_parser("big_distill.cmd")(argv)
  assert capsys.readouterr().err == ("big_distill.cmd: error: Data set my_data is not prepared "
                                     "in /x.\n")
