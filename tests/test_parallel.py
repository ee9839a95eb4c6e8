"""parallel.py: meshes, batch and fsdp shardings, gathering to the host.

The multi-device checks run in one subprocess with 8 fake CPU devices (the
test process has one device and cannot change that once JAX started).
"""

import threading
import time

import jax
import ml_collections as mlc
import pytest
from jax.sharding import PartitionSpec as P

from big_distill import parallel
from big_distill.errors import ConfigError
from tests.helpers import run_with_devices



def test_fsdp_spec_shards_the_largest_divisible_axis_of_large_arrays():
  assert parallel.fsdp_spec((3, 3, 64, 128), 4, min_size=1000) == P(None, None, None, "fsdp")
  # The largest axis (130) is not divisible by 4: the next one is taken.
  assert parallel.fsdp_spec((64, 130), 4, min_size=1000) == P("fsdp", None)
  assert parallel.fsdp_spec((3, 5, 7, 11), 4, min_size=10) == P()  # None divisible.
  assert parallel.fsdp_spec((64, 128), 4, min_size=64 * 128 + 1) == P()  # Too small.
  assert parallel.fsdp_spec((64, 128), 4, min_size=64 * 128) == P(None, "fsdp")  # At the threshold.
  assert parallel.fsdp_spec((64, 128), 1, min_size=1) == P()  # No fsdp axis.
  assert parallel.fsdp_spec((), 4, min_size=0) == P()  # Scalars.


def test_check_batch_size_gives_the_per_process_batch_or_a_fix():
  mesh = parallel.make_mesh(mlc.ConfigDict(dict(data=-1, fsdp=1)))
  n = jax.device_count()
  assert parallel.check_batch_size(16 * n, mesh) == 16 * n // jax.process_count()


def test_mesh_that_does_not_fit_the_devices_says_so():
  n = jax.device_count()
  with pytest.raises(ValueError, match=rf"data={n + 1} x fsdp=1 does not fit the {n} devices"):
    parallel.make_mesh(mlc.ConfigDict(dict(data=n + 1, fsdp=1)))
  with pytest.raises(ValueError, match="at most one of data and fsdp may be -1"):
    parallel.make_mesh(mlc.ConfigDict(dict(data=-1, fsdp=-1)))


def test_peer_timeout_from_the_environment(monkeypatch):
  monkeypatch.delenv(parallel.PEER_TIMEOUT_ENV, raising=False)
  assert parallel.peer_timeout_s() == parallel.DEFAULT_PEER_TIMEOUT_S <= 120
  monkeypatch.setenv(parallel.PEER_TIMEOUT_ENV, "12.5")
  assert parallel.peer_timeout_s() == 12.5
  for bad in ("0", "-3", "soon"):
    monkeypatch.setenv(parallel.PEER_TIMEOUT_ENV, bad)
    with pytest.raises(ConfigError, match=rf"{parallel.PEER_TIMEOUT_ENV}='{bad}'"):
      parallel.peer_timeout_s()


def test_initialize_distributed_starts_nothing_for_one_local_process(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "TPU_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda *a, **k: pytest.fail("jax.distributed.initialize was called"))
  parallel.initialize_distributed()
  monkeypatch.setenv("SLURM_NTASKS", "4")
  monkeypatch.setenv("SLURM_STEP_ID", "0")
  called = {}
  monkeypatch.setattr(jax.distributed, "initialize", lambda **k: called.update(k))
  parallel.initialize_distributed(peer_timeout=20)
  # JAX's own heartbeat is the backstop: it waits longer than the watchdog.
  assert called == {"heartbeat_timeout_seconds": 50}


class _KeyValueStore:
  """The two calls of jax.distributed's coordination client that the watchdog uses."""

  def __init__(self):
    self.values, self.lock = {}, threading.Lock()

  def key_value_set(self, key, value, allow_overwrite=False):
    del allow_overwrite
    with self.lock:
      self.values[key] = value

  def key_value_dir_get(self, prefix):
    with self.lock:
      return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def _watchdog(store, monkeypatch, lost):
  monkeypatch.setattr(parallel._Watchdog, "current", None)
  monkeypatch.setattr(parallel._Watchdog, "_lost",
                      lambda self, peer, info, why: lost.append((peer, why)))
  monkeypatch.setattr(parallel.atexit, "register", lambda fn: None)
  parallel._Watchdog.start(store, 0, 2, timeout=1.0)  # Beats and checks every 0.2 s.
  return parallel._Watchdog.current


def test_a_failure_with_live_peers_returns_after_one_heartbeat(monkeypatch):
  store, lost = _KeyValueStore(), []
  watchdog = _watchdog(store, monkeypatch, lost)
  peer = parallel._Watchdog(store, 1, 2, timeout=1.0)
  stop = threading.Event()
  threading.Thread(target=lambda: [peer._beat() for _ in iter(lambda: stop.wait(0.05), True)],
                   daemon=True).start()
  try:
    start = time.monotonic()
    parallel.stop_if_a_peer_is_lost()
    assert time.monotonic() - start < 0.8 and not lost  # Not the timeout: the peer beat.
    store.key_value_set(f"{parallel._KV}/1/done", "1")
    parallel.stop_if_a_peer_is_lost()  # A finished peer is not lost either.
    assert not lost
  finally:
    stop.set()
    watchdog.finish()


def test_a_failure_with_a_silent_peer_waits_for_the_watchdog_to_report_it(monkeypatch):
  store, lost = _KeyValueStore(), []
  watchdog = _watchdog(store, monkeypatch, lost)
  store.key_value_set(f"{parallel._KV}/1/beat", "1")  # Then killed: never beats again.
  try:
    start = time.monotonic()
    parallel.stop_if_a_peer_is_lost()  # Waits past the timeout (the real _lost exits).
    took = time.monotonic() - start
    assert 1.0 < took < 3.0, took
    assert [peer for peer, _ in lost] == [1] and "killed" in lost[0][1], lost
  finally:
    watchdog.finish()


@pytest.fixture(scope="module")
def eight_devices():
  return run_with_devices(8, """
    import json
    import jax, numpy as np
    import ml_collections as mlc
    from big_distill import parallel
    out = {}
    for data, fsdp in [(-1, 1), (4, -1), (2, 4), (1, 8)]:
      mesh = parallel.make_mesh(mlc.ConfigDict(dict(data=data, fsdp=fsdp)))
      out[f"{data},{fsdp}"] = dict(mesh.shape)
    try:
      parallel.make_mesh(mlc.ConfigDict(dict(data=3, fsdp=-1)))
    except ValueError as e:
      out["3,-1"] = str(e)
    mesh = parallel.make_mesh(mlc.ConfigDict(dict(data=2, fsdp=4)))
    try:
      parallel.check_batch_size(12, mesh)
    except ValueError as e:
      out["batch12"] = str(e)
    out["batch16"] = parallel.check_batch_size(16, mesh)
    # A batch of 16 rows: each device holds 2 consecutive rows, in device order.
    batch = jax.device_put(np.arange(16 * 3).reshape(16, 3), parallel.batch_sharding(mesh))
    out["rows"] = [sorted(int(r) for r in set(np.asarray(s.data)[:, 0] // 3)) for s in
                   sorted(batch.addressable_shards, key=lambda s: s.index[0].start)]
    tree = {"big": np.zeros((64, 128), np.float32), "small": np.zeros((8,), np.float32),
            "odd": np.zeros((33, 65), np.float32)}
    shardings = parallel.param_shardings(mesh, tree, min_size=1024)
    out["specs"] = {k: str(s.spec) for k, s in shardings.items()}
    x = np.random.default_rng(0).normal(size=(64, 128)).astype(np.float32)
    sharded = jax.device_put(x, shardings["big"])
    out["shard_shape"] = list(sharded.addressable_shards[0].data.shape)
    host = parallel.to_host({"big": sharded}, mesh)
    out["to_host_equal"] = bool(isinstance(host["big"], np.ndarray) and
                                np.array_equal(host["big"], x))
    print(json.dumps(out))
  """)


def test_mesh_shapes_on_8_devices(eight_devices):
  out = eight_devices
  assert out["-1,1"] == {"data": 8, "fsdp": 1}
  assert out["4,-1"] == {"data": 4, "fsdp": 2}
  assert out["2,4"] == {"data": 2, "fsdp": 4}
  assert out["1,8"] == {"data": 1, "fsdp": 8}
  assert "data=3 x fsdp=-1 does not fit the 8 devices" in out["3,-1"]


def test_batch_is_split_over_every_device(eight_devices):
  out = eight_devices
  assert "batch_size=12 is not divisible by the 8 devices" in out["batch12"]
  assert "e.g. 8" in out["batch12"]
  assert out["batch16"] == 16
  assert out["rows"] == [[2 * i, 2 * i + 1] for i in range(8)]


def test_fsdp_shards_large_params_and_to_host_gathers_them(eight_devices):
  out = eight_devices
  assert out["specs"] == {"big": str(P(None, "fsdp")), "small": str(P()), "odd": str(P())}
  assert out["shard_shape"] == [64, 32]  # 128 columns over fsdp=4.
  assert out["to_host_equal"]
