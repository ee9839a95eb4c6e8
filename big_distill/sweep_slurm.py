"""A sweep as a SLURM array job: one unfinished cell per array task."""

from __future__ import annotations

import os
import shlex
from typing import Any, Sequence

from big_distill.sweep_launch import finished


def slurm_script(cells: Sequence[Any], root: str, passthrough: Sequence[str], python: str,
                 path: str) -> tuple[str, str]:
  """Writes `path` (an sbatch array job) and `path.commands` (one cell a line)."""
  todo = [c for c in cells if not finished(os.path.join(root, c.name))]
  commands = path + ".commands"
  with open(commands, "w") as f:
    for c in todo:
      f.write(shlex.join(c.command(root, passthrough, python)) + "\n")
  n = max(len(todo), 1)
  body = f"""#!/bin/bash
# A big_distill sweep: one unfinished cell per array task ({len(todo)} of {len(cells)}).
# Made by: python -m big_distill.sweep ... --slurm={path}
# Submit from {os.getcwd()}: sbatch {path}
# A preempted task (exit 143) resumes from its checkpoint when requeued or
# resubmitted; remake this file to drop the cells that have finished since.
#SBATCH --job-name=big_distill_sweep
#SBATCH --array=0-{n - 1}
#SBATCH --requeue
#SBATCH --output=%x-%A_%a.out
set -euo pipefail
cd {shlex.quote(os.getcwd())}
cmd=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(os.path.abspath(commands))})
[ -n "$cmd" ] || exit 0
eval "exec $cmd"
"""
  with open(path, "w") as f:
    f.write(body)
  return path, commands
