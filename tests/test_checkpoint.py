"""checkpoint.py: round trips, keep, damaged steps, full disks, device counts."""

import errno
import glob
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from big_distill import checkpoint as ckpt_lib
from big_distill import errors
from big_distill import fileio
from tests.helpers import run_with_devices


def make_state(seed=0):
  rng = np.random.default_rng(seed)
  return {"params": {"w": jnp.asarray(rng.normal(size=(8, 16)).astype(np.float32)),
                     "b": jnp.asarray(rng.normal(size=(16,)).astype(np.float32))},
          "opt": {"mu": jnp.asarray(rng.normal(size=(8, 16)), jnp.bfloat16)},
          "step": jnp.asarray(seed, jnp.int32)}


def abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


def same(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(
      lambda x, y: x.dtype == y.dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes(),
      a, b)))


@pytest.fixture
def saved(tmp_path):
  """Checkpoints of steps 1..4 (states seeded by their step), keep=3."""
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), keep=3)
  for step in range(1, 5):
    ckpt.save(step, make_state(step))
  ckpt.close()
  return tmp_path / "ckpt"


def test_round_trip_is_bitwise_and_keeps_the_newest(saved):
  ckpt = ckpt_lib.Checkpointer(str(saved), keep=3)
  try:
    assert ckpt.steps() == [2, 3, 4]
    step, state = ckpt.restore(abstract(make_state()))
  finally:
    ckpt.close()
  assert step == 4 and same(state, make_state(4))
  assert state["opt"]["mu"].dtype == jnp.bfloat16


def test_restore_of_an_empty_directory_is_none(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "none"))
  try:
    assert ckpt.restore(abstract(make_state())) is None
  finally:
    ckpt.close()


def _truncate_step(step_dir):
  """Damage: the item's files cut to 10 bytes (the arrays, the metadata, all)."""
  files = [f for f in glob.glob(str(step_dir / "default" / "**"), recursive=True)
           if os.path.isfile(f)]
  assert files
  for f in files:
    os.truncate(f, min(10, os.path.getsize(f)))


def test_unreadable_newest_step_is_moved_aside_and_the_previous_one_used(saved, caplog):
  _truncate_step(saved / "4")
  ckpt = ckpt_lib.Checkpointer(str(saved), keep=3)
  try:
    with caplog.at_level(logging.WARNING):
      step, state = ckpt.restore(abstract(make_state()))
    assert step == 3 and same(state, make_state(3))
    assert ckpt.steps() == [2, 3]
    ckpt.save(4, make_state(40))  # The step can be written again on this run.
    ckpt.wait()
    assert ckpt.steps() == [2, 3, 4]
  finally:
    ckpt.close()
  assert (Path(str(saved) + ".unreadable") / "4").is_dir()
  assert "Checkpoint at step 4" in caplog.text and "cannot be read" in caplog.text


def test_no_readable_step_is_a_user_error_naming_each(saved):
  for s in (2, 3, 4):
    _truncate_step(saved / str(s))
  ckpt = ckpt_lib.Checkpointer(str(saved))
  try:
    with pytest.raises(ckpt_lib.CheckpointError, match="None of the checkpoints") as e:
      ckpt.restore(abstract(make_state()))
  finally:
    ckpt.close()
  assert isinstance(e.value, errors.CheckpointError) and isinstance(e.value, errors.UserError)
  assert all(f"step {s}:" in str(e.value) for s in (2, 3, 4))


def test_each_checkpoint_records_the_device_and_process_counts(saved, monkeypatch, caplog):
  ckpt = ckpt_lib.Checkpointer(str(saved))
  try:
    assert ckpt.saved_topology(4) == {"device_count": 1, "process_count": 1}
    with caplog.at_level(logging.WARNING):
      ckpt.restore(abstract(make_state()))
    assert "device count changed" not in caplog.text  # Same shape: nothing said.
    # As if this run had 8 devices: the resume says so.
    monkeypatch.setattr(ckpt_lib, "topology", lambda: {"device_count": 8, "process_count": 2})
    with caplog.at_level(logging.WARNING):
      ckpt.restore(abstract(make_state()))
  finally:
    ckpt.close()
  assert ("The device count changed: the checkpoint at step 4 was written on 1 devices "
          "(1 processes), this run has 8 devices (2 processes)") in caplog.text
  assert "the data stream goes on at step 5" in caplog.text


def test_a_save_the_disk_has_no_room_for_is_refused_before_anything_is_written(
    saved, monkeypatch):
  state = make_state(5)
  needed = ckpt_lib.checkpoint_bytes(state)
  assert needed > ckpt_lib.tree_bytes(state)
  before = sorted(os.listdir(saved))
  ckpt = ckpt_lib.Checkpointer(str(saved), keep=3)
  try:
    monkeypatch.setattr(fileio, "free_bytes", lambda path: needed - 1)
    with pytest.raises(ckpt_lib.DiskFullError) as e:
      ckpt.save(5, state)
    assert sorted(os.listdir(saved)) == before  # orbax was never asked.
  finally:
    ckpt.close()  # Does not raise the same failure a second time.
  assert e.value.errno == errno.ENOSPC
  assert str(e.value) == (
      f"No space left on device while saving the checkpoint of step 5 to {saved / '5'} (it "
      f"needs about {fileio.human_bytes(needed)}, {fileio.human_bytes(needed - 1)} free now). "
      "The previous checkpoint (step 4) and metrics.jsonl are intact; nothing of it was "
      "written. Free space on that file system (or move the workdir), then rerun the same "
      "command to resume.")
  monkeypatch.setattr(fileio, "free_bytes", lambda path: needed)  # Just enough: saved.
  ckpt = ckpt_lib.Checkpointer(str(saved), keep=3)
  try:
    ckpt.save(5, state)
    ckpt.wait()
    assert ckpt.steps() == [3, 4, 5]
  finally:
    ckpt.close()


def _fail_in_background(ckpt, monkeypatch, error, partial=None):
  """As if the asynchronous save of step 5 had failed with `error` (after
  writing `partial`): orbax reports it at the next save or wait."""
  monkeypatch.setattr(ckpt._mngr, "save", lambda *a, **k: None)  # pylint: disable=protected-access
  ckpt.save(5, make_state(5))

  written = []

  def fail(*args, **kwargs):
    del args, kwargs
    if partial is not None and not written:  # Once: orbax reports it again, writes nothing.
      partial.mkdir()
      (partial / "half").write_bytes(b"x" * 100)
      written.append(partial)
    raise error
  monkeypatch.setattr(ckpt._mngr, "wait_until_finished", fail)  # pylint: disable=protected-access


def test_a_full_disk_during_a_save_is_one_error_and_removes_the_partial_save(saved,
                                                                            monkeypatch):
  ckpt = ckpt_lib.Checkpointer(str(saved), keep=3)
  partial = saved / "5.orbax-checkpoint-tmp"
  # TensorStore's report: a ValueError that has the errno only in its text
  # (not parsed): the file system with no room left tells it is a full disk.
  error = ValueError(f'RESOURCE_EXHAUSTED: Failed writing: "{partial}/d/1": No space left on '
                     "device [os_error_code='28']")
  try:
    _fail_in_background(ckpt, monkeypatch, error, partial)
    monkeypatch.setattr(fileio, "free_bytes", lambda path: 0)
    with pytest.raises(ckpt_lib.DiskFullError) as e:
      ckpt.save(6, make_state(6))
  finally:
    ckpt.close()  # Does not raise the same failure a second time.
  msg = str(e.value)
  assert e.value.errno == errno.ENOSPC and e.value.__cause__ is error
  needed = fileio.human_bytes(ckpt_lib.checkpoint_bytes(make_state(5)))
  assert msg.startswith(f"No space left on device while saving the checkpoint of step 5 to "
                        f"{saved / '5'} (it needs about {needed}, 0 B free now)")
  assert ("The previous checkpoint (step 4) and metrics.jsonl are intact; the partial save "
          "was removed") in msg
  assert not partial.exists()
  assert sorted(os.listdir(saved)) == ["2", "3", "4"]


@pytest.mark.parametrize("error", [
    OSError(errno.EACCES, "Permission denied"),
    ValueError("RESOURCE_EXHAUSTED: out of memory"),
    ValueError("RESOURCE_EXHAUSTED: No space left on device [os_error_code='28']")])
def test_a_failed_save_on_a_disk_with_room_keeps_its_own_error(saved, monkeypatch, error):
  """Not a full disk (whatever its text says): a bug or another fault, with its traceback."""
  ckpt = ckpt_lib.Checkpointer(str(saved), keep=3)
  try:
    _fail_in_background(ckpt, monkeypatch, error)
    with pytest.raises(type(error)) as e:
      ckpt.wait()
    assert e.value is error
  finally:
    monkeypatch.undo()
    ckpt.close()


def test_a_disk_that_fills_during_a_real_save_is_one_error(small_disk, monkeypatch):
  """orbax and TensorStore really writing onto a full tmpfs (root only).

  The check before the save is made to pass, as if another writer took the
  space after it: the failure TensorStore reports (a ValueError, the errno
  only in its text) is still a DiskFullError.
  """
  disk = small_disk(4 << 20)
  ckpt = ckpt_lib.Checkpointer(str(disk / "ckpt"), keep=3)
  big = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(2 << 20,)).astype(np.float32)),
         "step": jnp.asarray(2, jnp.int32)}  # 8 MiB of incompressible floats.
  try:
    ckpt.save(1, make_state(1))
    ckpt.wait()
    real, asked = fileio.free_bytes, []

    def room_at_first(path):  # The check before the save sees room; later, the truth.
      asked.append(path)
      return 1 << 40 if len(asked) == 1 else real(path)
    monkeypatch.setattr(fileio, "free_bytes", room_at_first)
    with pytest.raises(ckpt_lib.DiskFullError) as e:
      ckpt.save(2, big)
      ckpt.wait()
  finally:
    ckpt.close()
  msg = str(e.value)
  assert msg.startswith("No space left on device while saving the checkpoint of step 2 to "
                        f"{disk / 'ckpt' / '2'}"), msg
  assert ("The previous checkpoint (step 1) and metrics.jsonl are intact; the partial save "
          "was removed") in msg, msg
  assert sorted(os.listdir(disk / "ckpt")) == ["1"]
  ckpt = ckpt_lib.Checkpointer(str(disk / "ckpt"))
  try:
    step, state = ckpt.restore(abstract(make_state()))
  finally:
    ckpt.close()
  assert step == 1 and same(state, make_state(1))


def test_tree_bytes():
  assert ckpt_lib.tree_bytes(make_state()) == 4 * (8 * 16 + 16) + 2 * 8 * 16 + 4


def test_restore_into_another_device_count_and_sharding(tmp_path):
  out = run_with_devices(8, f"""
    import json
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from big_distill import checkpoint as ckpt_lib
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    def on(n, spec):
      mesh = Mesh(np.array(jax.devices()[:n]), ("fsdp",))
      return NamedSharding(mesh, spec)
    four = on(4, P(None, "fsdp"))
    ckpt = ckpt_lib.Checkpointer("{tmp_path}/c")
    ckpt.save(1, {{"w": jax.device_put(x, four), "step": jax.numpy.int32(1)}})
    ckpt.close()
    out = {{}}
    for n, spec in [(2, P("fsdp", None)), (8, P(None, "fsdp")), (1, P())]:
      target = {{"w": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on(n, spec)),
                "step": jax.ShapeDtypeStruct((), np.int32, sharding=on(n, P()))}}
      ckpt = ckpt_lib.Checkpointer("{tmp_path}/c")
      step, state = ckpt.restore(target)
      ckpt.close()
      w = state["w"]
      out[str(n)] = dict(step=step, same=bool(np.array_equal(np.asarray(w), x)),
                         sharding=bool(w.sharding == target["w"].sharding),
                         devices=len(w.sharding.device_set),
                         shard=list(w.addressable_shards[0].data.shape))
    print(json.dumps(out))
  """)
  assert out["2"] == dict(step=1, same=True, sharding=True, devices=2, shard=[4, 16])
  assert out["8"] == dict(step=1, same=True, sharding=True, devices=8, shard=[8, 2])
  assert out["1"] == dict(step=1, same=True, sharding=True, devices=1, shard=[8, 16])


def test_replica_parallel_saving_is_a_choice_and_both_restore_the_same(tmp_path):
  """`config.ckpt_replica_parallel`: with it (orbax's default), the replicas of
  a replicated array each write a slice, which compiles slicing programs at the
  first save; without it, none. Both write checkpoints that restore exactly."""
  out = run_with_devices(2, f"""
      import json, logging
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import NamedSharding, PartitionSpec as P
      from big_distill import checkpoint as ckpt_lib

      class Count(logging.Handler):
        n = 0
        def emit(self, record):
          Count.n += record.getMessage().startswith("Compiling jit(slice")
      logging.getLogger("jax").addHandler(Count())
      mesh = jax.make_mesh((2,), ("data",))
      rep = NamedSharding(mesh, P())
      state = {{f"w{{i}}": jax.device_put(jnp.arange(64 * (i + 1), dtype=jnp.float32), rep)
               for i in range(3)}}
      out = {{}}
      for on in (True, False):
        ckpt = ckpt_lib.Checkpointer("{tmp_path}/" + str(on), replica_parallel=on)
        Count.n = 0
        with jax.log_compiles():
          ckpt.save(1, state)
          ckpt.wait()
        step, back = ckpt.restore(jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state))
        ckpt.close()
        same = all(np.array_equal(np.asarray(back[k]), np.asarray(state[k])) for k in state)
        out[str(on)] = [Count.n, step, same, str(back["w0"].sharding.spec)]
      print(json.dumps(out))
      """)
  assert out["True"][0] >= 3 and out["False"][0] == 0, out
  assert out["True"][1:] == out["False"][1:] == [1, True, "P()"], out
