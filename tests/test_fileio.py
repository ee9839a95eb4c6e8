"""fileio.py: a file appears whole or not at all; a full disk, told by errno or by the file system."""

import errno
import shutil

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


# ---- A full disk ------------------------------------------------------------------


@pytest.mark.parametrize("e,full", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (OSError(errno.EACCES, "Permission denied"), False),
    (ValueError("RESOURCE_EXHAUSTED: out of memory"), False),
    (ValueError("shape mismatch: 280 vs 28"), False),
    # TensorStore's report of ENOSPC: the errno only in its text, which is
    # not parsed (no_room asks the file system instead; test_checkpoint).
    (ValueError("RESOURCE_EXHAUSTED: Failed to write 49906 bytes to file 4: No space left "
                "on device [os_error_code='28']"), False)])
def test_is_disk_full(e, full):
  assert fileio.is_disk_full(e) is full
  try:  # Also when it is the cause of another error.
    try:
      raise e
    except Exception as inner:
      raise RuntimeError("commit failed") from inner
  except RuntimeError as outer:
    assert fileio.is_disk_full(outer) is full
  try:  # Or its context (raised while handling it).
    try:
      raise e
    except Exception:  # pylint: disable=broad-except
      raise RuntimeError("cleanup failed")  # pylint: disable=raise-missing-from
  except RuntimeError as outer:
    assert fileio.is_disk_full(outer) is full


def test_free_bytes_of_a_path_still_to_be_made(tmp_path):
  free = fileio.free_bytes(str(tmp_path / "not" / "yet"))
  assert abs(free - shutil.disk_usage(tmp_path).free) < 1 << 24  # (Others write too.)
  assert fileio.free_bytes("gs://bucket/run") is None


def test_no_room_asks_the_file_system_when_the_error_has_no_errno(tmp_path, monkeypatch):
  text_only = ValueError("RESOURCE_EXHAUSTED: No space left on device [os_error_code='28']")
  assert not fileio.no_room(text_only, str(tmp_path))  # Room left: another fault.
  assert fileio.no_room(OSError(errno.ENOSPC, "full"), str(tmp_path))  # The errno says so.
  monkeypatch.setattr(fileio, "free_bytes", lambda path: fileio.FULL_BELOW_BYTES - 1)
  assert fileio.no_room(text_only, str(tmp_path))
  monkeypatch.setattr(fileio, "free_bytes", lambda path: None)  # gs://: the errno alone.
  assert not fileio.no_room(text_only, "gs://bucket/run")


def test_disk_full_error_is_an_enospc_oserror_of_one_line():
  e = fileio.DiskFullError("No space left on device while ...")
  assert isinstance(e, OSError) and e.errno == errno.ENOSPC
  assert str(e) == "No space left on device while ..."
  assert fileio.is_disk_full(e)
