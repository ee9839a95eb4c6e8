"""precision.py: bfloat16 against float32 logits of every model of a config.

The two-convolution model of tests/helpers.py stands in for BiT (the check is
the same for any model module); BiT's own bfloat16 numerics are in test_bit.py.
"""

import json

import pytest

from big_distill import precision
from tests import helpers


@pytest.fixture
def config_file(tmp_path, monkeypatch):
  helpers.install_tiny_cnn(monkeypatch)
  path = tmp_path / "tiny_config.py"
  path.write_text(helpers.TINY_CNN_CONFIG)
  return str(path)


def test_precision_reports_every_model(config_file, tmp_path, capsys, monkeypatch):
  teacher = tmp_path / "teacher.npz"
  teacher.write_bytes(b"")
  helpers.run_main(precision, ["precision", f"--config={config_file}",
                               f"--config.t1_init={teacher}"], monkeypatch)
  out = json.loads(capsys.readouterr().out.strip().splitlines()[0])
  # The teacher's checkpoint exists, so its weights are used; the student has none.
  assert out["weights"] == {"student": "random", "t1": f"checkpoint {teacher}"}
  assert out["images"] == "synthetic"  # The config's data set is not prepared.
  assert set(out["models"]) == {"student", "t1"}
  for m in out["models"].values():
    assert 0 < m["rel_l2"] <= m["tolerance"] and 0 < m["sensitivity"] and 0 <= m["kl"]
  assert out["within_tolerance"]


def test_unreadable_config_is_one_line(config_file, capsys, monkeypatch):
  with pytest.raises(SystemExit) as e:
    helpers.run_main(precision, ["precision", f"--config={config_file}",
                                 "--config.distill.views=paper"], monkeypatch)
  assert e.value.code == 2
  assert "big_distill.precision: error: config.distill.views='paper'" in capsys.readouterr().err


def test_precision_covers_a_vit_teacher(tmp_path, capsys, monkeypatch):
  """configs/flowers_vit_r50.py:runlocal with a (random, non-zero head) ViT
  teacher file: its bfloat16 logits are checked like the student's."""
  import jax  # pylint: disable=g-import-not-at-top
  from big_distill import weights  # pylint: disable=g-import-not-at-top
  from big_distill.configs import common  # pylint: disable=g-import-not-at-top
  from big_distill.models import vit  # pylint: disable=g-import-not-at-top
  model = vit.Model(102, **common.vit_teacher("siglip_b16", runlocal=True)[0])
  teacher = str(tmp_path / "vit.npz")
  vit.save(jax.jit(lambda k: weights.random_params(model, 32, k))(jax.random.key(0)), teacher)
  helpers.run_main(precision, ["precision", f"--config={helpers.REPO}/configs/flowers_vit_r50.py"
                               ":runlocal", f"--config.t1_init={teacher}"], monkeypatch)
  out = json.loads(capsys.readouterr().out.strip().splitlines()[0])
  assert out["weights"]["t1"] == f"checkpoint {teacher}"
  t1 = out["models"]["t1"]
  assert 0 < t1["rel_l2"] <= t1["tolerance"] and out["within_tolerance"]
