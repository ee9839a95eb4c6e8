"""fileio.py: a file appears whole or not at all."""

import pytest

from big_distill import fileio


def test_atomic_write_replaces_whole(tmp_path):
  path = tmp_path / "config.json"
  path.write_text("old")
  with fileio.atomic_write(str(path)) as f:
    f.write("new")
    assert path.read_text() == "old"  # Not visible before the body is done.
  assert path.read_text() == "new"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "student.npz"
  path.write_bytes(b"old")
  with pytest.raises(RuntimeError, match="disk full"):
    with fileio.atomic_write(str(path), "wb") as f:
      f.write(b"half")
      raise RuntimeError("disk full")
  assert path.read_bytes() == b"old"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["student.npz"]


def test_only_whole_file_modes():
  with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
    with fileio.atomic_write("/tmp/x", "a"):
      pass
