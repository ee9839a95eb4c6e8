#!/usr/bin/env python3
"""Plots big_distill runs: accuracy, student-teacher distance and training loss.

    python scripts/plot_metrics.py runs/fm_300ep runs/fm_1000ep --out runs/figures
    python scripts/plot_metrics.py gs://bucket/runs/fm --x step --metrics accuracy train/lr

Reads each WORKDIR/metrics.jsonl and writes accuracy.png, distance.png and
train_loss.png (or the figures named by --metrics) into --out, the first
WORKDIR by default, printing each path. The logic is big_distill.plotting.plot.
"""

import argparse
import sys

from big_distill import plotting  # pip install -e . (or PYTHONPATH=the checkout)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                      help="run folders holding metrics.jsonl (local or gs://)")
  parser.add_argument("--out", default=None, help="output folder (default: the first WORKDIR)")
  parser.add_argument("--x", choices=plotting.X_AXES, default="epoch", help="x axis")
  parser.add_argument("--metrics", nargs="+", default=list(plotting.FIGURES),
                      help=f"figures to draw: {', '.join(plotting.FIGURES)} (default: all), "
                           "or metric names/patterns such as train/lr or 'test/*_ece', "
                           "each drawn into its own PNG")
  args = parser.parse_args(argv)
  try:
    paths = plotting.plot(args.workdirs, args.out, x=args.x, metrics=args.metrics)
  except FileNotFoundError as e:
    parser.exit(1, f"{parser.prog}: error: {e}\n")
  for path in paths:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
