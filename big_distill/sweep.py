r"""Sweeps: a grid of ordinary `big_distill.train` runs, and one table of their results.

    # the commands of a grid (for any scheduler)
    python -m big_distill.sweep --config=configs/fmnist_distill.py:images=100,epochs=300 \
        --sweep='arm=funmatch,fixed;lr=0.001,0.003,0.01,0.03' --root=$HOME/bd_runs/sel \
        --config.t1_init=$HOME/bd_runs/fmnist/teacher_e30 --print
    # run them one after another; rerun to resume (finished cells are skipped)
    python -m big_distill.sweep ... --run
    # a SLURM array job, one cell per task
    python -m big_distill.sweep ... --slurm=sweep.sbatch
    # one table of every cell, mean +- std over seeds, the lr chosen on validation
    python -m big_distill.sweep collect --root=$HOME/bd_runs/sel --select=val/student_top1 \
        --over=lr --plot=val/student_top1:lr --out=docs/results/sel

The grid: `--sweep='a=1,2;b=x,y'` is the product a x b; `--sweep` given
twice is the union of two grids (e.g. a different lr per arm). A name is a
config argument of the config file (`:a=1`), or `config.<field>` for a field
of the config (`--config.<field>=...`). Other `--config.<field>=value` flags
go unchanged to every cell.

Each cell is one workdir under `--root`, named by its config arguments and
swept fields in sorted order (`arm=fixed,epochs=300,images=100,lr=0.01`), so
two sweeps that make the same cell share it. `sweep_cell.json` in the workdir
records what the cell is (its arguments, command) and, after each run, its
wall time, device and the machine's load; `collect` reads that file, never
the folder name. A cell is finished when its `student.npz` exists (the
trainer writes it at the last step); an interrupted cell resumes from its
checkpoint when run again. A cell being run by another `--run` (a lock file)
is skipped, so several `--run` processes can share one grid. The cells of
`--run` share JAX's persistent compilation cache (`ROOT/.jax_cache`, or
`--compilation_cache=DIR|none`): the seeds of one setting, and the
evaluators of every cell with the same student, compile once. (On the
Fashion-MNIST miniature's CPU box this cut a 100-epoch cell from ~97 s to
~46-62 s.)

Every cell's config is built and checked before anything runs: a wrong
argument or field is one error line naming the cell.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import sys
from typing import Any, Sequence

from big_distill import config_lib
from big_distill.errors import ConfigError, UserError
# The launcher, the SLURM writer and the collector live in their own modules;
# their public names are importable from here too (scripts and tests use them).
from big_distill.sweep_collect import (  # pylint: disable=unused-import
    DEFAULT_COLUMNS, SEED_FIELDS, check_select, collect, group, markdown, plot, read_cells,
    select, varying_fields)
from big_distill.sweep_launch import (  # pylint: disable=unused-import
    CACHE_DIR, CACHE_ENV, CELL_FILE, FINISHED_FILE, LOCK_FILE, PREEMPTED_EXIT_CODE, cell_env,
    device_string, finished, locked, run_cells)
from big_distill.sweep_slurm import slurm_script


# ---- The grid --------------------------------------------------------------

def parse_grid(text: str) -> list[tuple[str, list[str]]]:
  """'a=1,2;b=x' -> [('a', ['1', '2']), ('b', ['x'])], with a clear error."""
  out, seen = [], set()
  for part in text.split(";"):
    part = part.strip()
    if not part:
      continue
    name, eq, values = part.partition("=")
    name = name.strip()
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not eq or not name or not vals:
      raise ConfigError(f"--sweep={text!r}: {part!r} is not NAME=V1,V2,...; write e.g. "
                        "--sweep='lr=0.001,0.003;seed=0,1,2'.")
    if name in seen:
      raise ConfigError(f"--sweep={text!r} names {name!r} twice.")
    if name.startswith("--"):
      raise ConfigError(f"--sweep={text!r}: write {name[2:]!r}, without the dashes.")
    seen.add(name)
    out.append((name, vals))
  if not out:
    raise ConfigError(f"--sweep={text!r} is empty; write e.g. --sweep='lr=0.001,0.003'.")
  return out


def split_config(spec: str) -> tuple[str, dict[str, str]]:
  """'configs/x.py:a=1,b' -> ('configs/x.py', {'a': '1', 'b': 'true'})."""
  path, _, arg = spec.partition(":")
  args = {}
  for part in arg.split(","):
    part = part.strip()
    if part:
      name, eq, value = part.partition("=")
      args[name.strip()] = value.strip() if eq else "true"
  return path, args


def _name_value(value: str) -> str:
  """A value as it appears in a folder name: a path by its last part."""
  if "/" in value:
    value = value.rstrip("/").rsplit("/", 1)[-1]
  return re.sub(r"[^A-Za-z0-9._+-]", "_", value)


class Cell:
  """One run of the grid: its config arguments and `--config.` overrides."""

  def __init__(self, config_path: str, args: dict[str, str], overrides: dict[str, str],
               swept: Sequence[str]):
    self.config_path = config_path
    self.args = dict(args)
    self.overrides = dict(overrides)  # 'config.lr' -> '0.01'
    self.swept = tuple(swept)
    items = sorted(self.args.items()) + sorted(self.overrides.items())
    self.name = ",".join(f"{k}={_name_value(v)}" for k, v in items) or "default"

  @property
  def fields(self) -> dict[str, str]:
    """Every argument and override, the identity of the cell."""
    return {**self.args, **self.overrides}

  def command(self, root: str, passthrough: Sequence[str], python: str) -> list[str]:
    spec = self.config_path
    if self.args:
      spec += ":" + ",".join(f"{k}={v}" for k, v in self.args.items())
    overrides = [f"--{k}={v}" for k, v in self.overrides.items()]
    return [python, "-m", "big_distill.train", f"--config={spec}", *passthrough, *overrides,
            f"--workdir={os.path.join(root, self.name)}"]


def expand(config_spec: str, grids: Sequence[str]) -> list[Cell]:
  """The cells of the union of `grids` over the base `config_spec`, in order.

  Later names vary fastest: `--sweep='arm=a,b;seed=0,1'` gives (a,0) (a,1)
  (b,0) (b,1). A cell made twice (by two grids) is kept once.
  """
  path, base = split_config(config_spec)
  cells, names = [], set()
  for text in grids or [""]:
    grid = parse_grid(text) if text else []
    keys = [k for k, _ in grid]
    for values in itertools.product(*[v for _, v in grid]):
      args, overrides = dict(base), {}
      for k, v in zip(keys, values):
        if k.startswith("config."):
          overrides[k] = v
        else:
          args[k] = v
      cell = Cell(path, args, overrides, keys)
      if cell.name not in names:
        names.add(cell.name)
        cells.append(cell)
  return cells


# ---- Checking every cell's config up front ---------------------------------

def _convert(value: str, old: Any, where: str):
  if isinstance(old, bool):
    if value.lower() not in ("true", "false", "1", "0"):
      raise ConfigError(f"{where}={value!r}: expected true or false.")
    return value.lower() in ("true", "1")
  for t in (int, float):
    if isinstance(old, t):
      try:
        return t(value)
      except ValueError:
        raise ConfigError(f"{where}={value!r}: expected a number ({t.__name__}).") from None
  return value


def check_cells(cells: Sequence[Cell], passthrough: Sequence[str]) -> None:
  """Builds every cell's config as the trainer will; raises ConfigError naming the cell."""
  modules = {}
  fixed = {}
  for flag in passthrough:
    name, eq, value = flag[2:].partition("=")
    if not eq:
      raise ConfigError(f"{flag}: write --config.FIELD=VALUE.")
    fixed[name] = value
  for cell in cells:
    if cell.config_path not in modules:
      if not os.path.exists(cell.config_path):
        raise ConfigError(f"--config={cell.config_path}: no such file (relative paths are from "
                          f"{os.getcwd()}).")
      modules[cell.config_path] = config_lib.load_config_module(cell.config_path)
    arg = ",".join(f"{k}={v}" for k, v in cell.args.items())
    try:
      config = modules[cell.config_path].get_config(arg or None)
    except (ValueError, TypeError, KeyError) as e:
      raise ConfigError(f"cell {cell.name}: --config={cell.config_path}:{arg}: {e}") from None
    for name, value in {**fixed, **cell.overrides}.items():
      *parents, leaf = name.split(".")[1:]
      node = config
      try:
        for p in parents:
          node = node[p]
        old = node[leaf]
      except (KeyError, AttributeError, TypeError):
        raise ConfigError(f"cell {cell.name}: --{name}: no such config field in "
                          f"{cell.config_path}.") from None
      _convert(value, old, f"cell {cell.name}: --{name}")


# ---- Command line ----------------------------------------------------------

def _run_main(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(prog="python -m big_distill.sweep",
                              description="Runs a grid of big_distill.train cells.", allow_abbrev=False,
                              epilog="Also: python -m big_distill.sweep collect --help")
  p.add_argument("--config", required=True, help="configs/X.py[:args], the base of every cell")
  p.add_argument("--sweep", action="append", default=[],
                 help="'a=1,2;b=x,y' (product); repeat for a union of grids")
  p.add_argument("--root", required=True, help="folder of the cells' workdirs")
  p.add_argument("--python", default=sys.executable, help="the Python that runs each cell")
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--print", action="store_true", help="print the commands (default)")
  mode.add_argument("--run", action="store_true", help="run the unfinished cells in order")
  mode.add_argument("--slurm", metavar="FILE", help="write a SLURM array job to FILE")
  p.add_argument("--compilation_cache", default=None, metavar="DIR",
                 help="with --run: JAX's persistent compilation cache for the cells (default: "
                      f"$JAX_COMPILATION_CACHE_DIR if set, else ROOT/{CACHE_DIR}; 'none': off)")
  args, rest = p.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    p.error(f"unrecognized arguments: {' '.join(bad)} (only --config.FIELD=VALUE is "
            "passed on to the cells)")
  root = os.path.abspath(os.path.expanduser(args.root))  # orbax wants absolute paths.
  cells = expand(args.config, args.sweep)
  check_cells(cells, rest)
  if args.slurm:
    path, commands = slurm_script(cells, root, rest, args.python, args.slurm)
    print(f"# wrote {path} and {commands}; submit with: sbatch {path}")
    return 0
  if not args.run:
    for cell in cells:
      done = finished(os.path.join(root, cell.name))
      print(("# finished: " if done else "") + shlex.join(cell.command(root, rest, args.python)))
    return 0
  print(f"# {len(cells)} cells under {root}", flush=True)
  _, failed = run_cells(cells, root, rest, args.python,
                        log=lambda s: print(s, flush=True),
                        env=cell_env(root, args.compilation_cache))
  if failed:
    print("# failed cells: " + ", ".join(failed))
    return 1
  return 0


def _collect_main(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(prog="python -m big_distill.sweep collect",
                              description="Tables and plots of a sweep's cells.")
  p.add_argument("--root", required=True)
  p.add_argument("--config", default=None,
                 help="with --sweep: only the cells of this sweep (several may share a root)")
  p.add_argument("--sweep", action="append", default=[])
  p.add_argument("--out", default=None, help="output folder (default: ROOT/collect)")
  p.add_argument("--select", default=None,
                 help="a validation metric to choose on, e.g. val/student_top1 (never test)")
  p.add_argument("--over", default=None,
                 help="fields chosen over, e.g. lr,mixup (default: every varying field "
                      "but the seed); the choice is made per combination of the others")
  p.add_argument("--columns", default=None, help="metrics of the Markdown table, comma-separated")
  p.add_argument("--plot", action="append", default=[], metavar="METRIC:FIELD",
                 help="e.g. val/student_top1:lr or val/student_top1:step (repeatable)")
  a = p.parse_args(argv)
  names = [c.name for c in expand(a.config, a.sweep)] if a.config else None
  collect(os.path.abspath(os.path.expanduser(a.root)), a.out, select_metric=a.select,
          over=a.over.split(",") if a.over else None,
          columns=a.columns.split(",") if a.columns else None, plots=a.plot, names=names)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    if argv and argv[0] == "collect":
      return _collect_main(argv[1:])
    return _run_main(argv)
  except UserError as e:
    print(f"big_distill.sweep: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
