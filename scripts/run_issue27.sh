#!/usr/bin/env bash
# Issue 27's missing cells, resumed on a new machine (session 14), from the frozen
# code 8383b98 that their steps were set up with. Idempotent: rerun to resume.
# Two workers walk one ordered list of sweeps; a cell one worker holds (its lock)
# is skipped by the other, and finished cells are skipped by both.
# Only cells that no record in docs/results/ holds are listed: main's
# `replicate_paper.py --collect --selection_from=docs/results` joins the recorded
# cells (another machine's) to the new ones. When a sweep's cells are all recorded,
# take it off the list: on a new machine it would run them again.
# Stop: touch ~/bd_runs/STOP (each worker ends after its current sweep) or kill the group.
set -u
# Run from a copy: bash reads a script as it goes, so a checkout that changes this
# file under a running runner would feed it the new file's bytes at the old offset.
if [ "$(readlink -f "$0")" != "$(readlink -f ~/bd_runs/run_issue27.sh)" ]; then
  mkdir -p ~/bd_runs && cp "$0" ~/bd_runs/run_issue27.sh && exec bash ~/bd_runs/run_issue27.sh "$@"
fi
MAIN=${MAIN:-/work/main}
PY=${PY:-$MAIN/.venv/bin/python}
R=$HOME/bd_runs/fmnist
CODE=$HOME/bd_runs/code/8383b98
mkdir -p ~/bd_runs/code ~/bd_runs/logs "$R/teacher_e30" "$R/teachers/epochs=1"
if [ ! -d "$CODE" ]; then
  git -C "$MAIN" archive --prefix=8383b98/ 8383b98 | tar -x -C ~/bd_runs/code
fi
# The teachers in git: the 30-epoch one of session 8, the 1-epoch one, and the
# 5-epoch one (session 14; the same command's result to the last logged digit).
mkdir -p "$R/teachers/epochs=5"
[ -e "$R/teachers/epochs=5/student.npz" ] || cp "$MAIN/docs/results/teachers/weights/fmnist_teacher_e5.npz" "$R/teachers/epochs=5/student.npz"
[ -e "$R/teacher_e30/student.npz" ] || cp "$MAIN/docs/results/teachers/weights/fmnist_teacher_e30_s8.npz" "$R/teacher_e30/student.npz"
[ -e "$R/teachers/epochs=1/student.npz" ] || cp "$MAIN/docs/results/teachers/weights/fmnist_teacher_e1.npz" "$R/teachers/epochs=1/student.npz"
cd "$CODE"
# Fashion-MNIST into the TFDS folder (from Debian's dataset-fashion-mnist offline); once.
[ -d ~/tensorflow_datasets/fashion_mnist ] || PYTHONPATH=$PWD "$PY" -m big_distill.data.prepare fashion_mnist
D=configs/fmnist_distill.py
T="--config.t1_init=$R/teacher_e30"
W="config.t1_init=$R/teachers/epochs=1,$R/teachers/epochs=5"
sw() { PYTHONPATH=$PWD nice -n 19 "$PY" -m big_distill.sweep "$@" --run; }
jobs_list() {
  # Recorded in docs/results/ (session 14), so not listed: the 5-epoch teacher (in git),
  # claim 8's Shampoo at 1,000 epochs (3 seeds), its bar c8_adam (3), c10_e1000 (9),
  # the 1,020-image table (27 of 27).
  # claim 10 at its budget, 10,000 epochs (the 30-epoch teacher's cells are claim 9's)
  sw --config=$D:images=100,epochs=10000 "--sweep=arm=funmatch;lr=0.03;seed=0,1,2;$W" --root=$R/img100_t2 $T
  # claim 9's 10,000-epoch cells: function matching and supervised
  sw --config=$D:images=100,epochs=10000 '--sweep=arm=funmatch;lr=0.03;seed=0,1,2' \
    '--sweep=arm=supervised;lr=0.01;mixup=1;seed=0,1,2' --root=$R/img100_t2 $T
  # claim 8's table row at 3,000 epochs
  sw --config=$D:images=100 '--sweep=arm=shampoo_paper;lr=10;epochs=3000;seed=0,1,2' --root=$R/img100_t2 $T
  # claim 11 (its selection gates c11_sup_all) and claim 9 at 30,000 epochs: the plan's steps
  PYTHONPATH=$PWD nice -n 19 "$PY" scripts/replicate_paper.py --root=$R --teacher=$R/teacher_e30 \
    --selection_from=docs/results --run --wait --steps=sel_sup_all,c11_sup_all,c11_fm_all,c9_e30000
}
worker() {
  for pass in 1 2 3; do
    [ -e ~/bd_runs/STOP ] && break
    echo "== worker $1 pass $pass $(date -u +%FT%TZ)"
    jobs_list
    sleep 20
  done
}
worker 0 > ~/bd_runs/logs/w0.log 2>&1 &
sleep 90
worker 1 > ~/bd_runs/logs/w1.log 2>&1 &
wait
