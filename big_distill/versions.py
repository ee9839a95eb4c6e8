"""What this machine runs big_distill with: the versions found, against the tested ranges.

    python -m big_distill.versions

Prints one line per dependency: its version (or "absent"), and "untested" where
it is outside the range that pyproject.toml pins (the ranges this repository is
tested with). An untested version is reported, not refused: a lent accelerator
has the versions it has (scripts/accelerator_check.sh prints this first).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import tomllib
from pathlib import Path

# Distributions the step needs, then the ones only the input pipeline and
# TensorBoard writing need (absent on a lent accelerator).
CORE = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections",
        "absl-py")
INPUT = ("tensorflow", "tensorflow-datasets", "clu")
# A distribution's other names (TensorFlow's CPU build is another distribution).
ALIASES = {"tensorflow": ("tensorflow", "tensorflow-cpu")}


def tested_ranges() -> dict[str, str]:
  """{distribution: specifier} from pyproject.toml (a work tree) or the installed metadata."""
  reqs: list[str] = []
  pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
  if pyproject.exists():
    reqs = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
  else:
    try:
      reqs = [r for r in importlib.metadata.requires("big_distill") or [] if "extra" not in r]
    except importlib.metadata.PackageNotFoundError:
      pass
  out = {}
  for r in reqs:
    name = r.split(";")[0].strip()
    for i, ch in enumerate(name):
      if ch in "<>=!~[ ":
        out[name[:i].lower()] = name[i:].strip()
        break
    else:
      out[name.lower()] = ""
  return out


# The module each distribution is imported as, where the name differs.
MODULES = {"tensorflow": "tensorflow", "tensorflow-datasets": "tensorflow_datasets", "clu": "clu"}


def importable(dist: str) -> bool:
  """Whether the distribution's module can be found by an import (installed, and
  not blocked: a test stands in for a machine without it by refusing the import)."""
  try:
    return importlib.util.find_spec(MODULES.get(dist, dist)) is not None
  except (ImportError, ValueError):
    return False


def version(dist: str) -> str | None:
  for name in ALIASES.get(dist, (dist,)):
    try:
      return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return None


def in_range(v: str, spec: str) -> bool | None:
  """Whether version `v` satisfies `spec` (None when `packaging` is not installed)."""
  try:
    from packaging.specifiers import SpecifierSet  # pylint: disable=g-import-not-at-top
    from packaging.version import Version  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return Version(v) in SpecifierSet(spec)


def report() -> list[str]:
  ranges = tested_ranges()
  lines = [f"python {sys.version.split()[0]} ({sys.executable})"]
  for dist in CORE + INPUT:
    v = version(dist) if dist not in INPUT or importable(dist) else None
    spec = next((ranges[n] for n in ALIASES.get(dist, (dist,)) if n in ranges), "")
    if v is None:
      note = ("absent: the input pipeline and its benchmark are skipped" if dist in INPUT
              else "ABSENT: needed by the step")
      lines.append(f"{dist:<20} {note}")
      continue
    ok = in_range(v, spec) if spec else True
    flag = "" if ok else ("  (untested: pyproject.toml pins " + spec + ")" if ok is False
                          else f"  (range {spec} not checked: no `packaging`)")
    lines.append(f"{dist:<20} {v}{flag}")
  return lines


def main() -> int:
  print("\n".join(report()), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
