"""compat.py: what it reaches into is still there, in the library version checked.

These fail loudly when jax changes: re-check compat.py against the new version
(does a public API now offer what it needs?), then update its record.
"""

import jax
import pytest

from big_distill import compat


def test_jax_is_the_version_compat_was_checked_against():
  assert jax.__version__ == compat.CHECKED_JAX_VERSION, (
      f"jax {jax.__version__} is installed; big_distill/compat.py was checked against jax "
      f"{compat.CHECKED_JAX_VERSION}. Re-check coordination_client() (and whether jax now "
      "has a public way to reach the coordination service's key-value store), then update "
      "CHECKED_JAX_VERSION.")


def test_the_coordination_client_is_where_compat_looks_for_it():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  assert hasattr(distributed.global_state, "client")
  assert jax.distributed.is_initialized() == (distributed.global_state.client is not None)


def test_without_jax_distributed_there_is_no_client():
  assert not jax.distributed.is_initialized()
  with pytest.raises(RuntimeError, match="jax.distributed is not initialized"):
    compat.coordination_client()
