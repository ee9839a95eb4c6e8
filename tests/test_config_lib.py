"""config_lib.py: config arguments, durations in any unit, the base config."""

import sys

from absl import flags
import ml_collections as mlc
from ml_collections import config_flags
import pytest

from big_distill import config_lib
from big_distill import errors


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
