#!/usr/bin/env bash
# Issue 27's cells, resumed (session 11). Two workers share the sweep's locks.
# Copy of the runner used in session 11 (~/bd_runs/runner_s11b.sh); paths are the machine's.
# Worker 1 first runs the 1,020-image setting's 9 missing cells (replicate_paper's
# img1020_t2 step, newer than this frozen code: its sweep command is given here).
# Stop: touch ~/bd_runs/STOP (each worker ends after its current pass) or kill the group.
cd ~/bd_runs/code/8383b98
# Claim 8's lr grid as main has it (lr 10 added 2026-12-05 by the claim's rule).
sed -i 's/^SHAMPOO_PAPER_LRS = "0.03,0.1,0.3,1,3"$/SHAMPOO_PAPER_LRS = "0.03,0.1,0.3,1,3,10"/' scripts/replicate_paper.py
PY=/work/main/.venv/bin/python
# First pass: claim 8 and claim 10's 1,000-epoch cells before the 50,000-image
# selection (sel_sup_all, ~3 worker-hours), which the full list runs first.
STEPS_A=teachers,sel_shampoo_paper,c8_shampoo_paper,c8_adam,c10_e1000
STEPS=teachers,sel_shampoo_paper,c8_shampoo_paper,c8_adam,sel_sup_all,c11_sup_all,c10_e1000,c10_e10000,c11_fm_all,c9_e10000,c9_e30000
img1020_t2() {
  PYTHONPATH=$PWD $PY -m big_distill.sweep --config=configs/fmnist_distill.py:images=1020 \
    '--sweep=arm=lowres;lr=0.03;epochs=100,300;seed=0' '--sweep=arm=fix_rs;lr=0.1;epochs=100,300;seed=0' \
    '--sweep=arm=fix_ic_ens;lr=0.01;epochs=100,300,1000;seed=0' '--sweep=arm=shampoo;lr=0.01;epochs=300,1000;seed=0' \
    --root=$HOME/bd_runs/fmnist/img1020_t2 --config.t1_init=$HOME/bd_runs/fmnist/teacher_e30 --run
}
worker() {
  for pass in $(seq 1 30); do
    [ -e ~/bd_runs/STOP ] && break
    echo "== worker $1 pass $pass $(date -u +%FT%TZ)"
    [ "$1" = 1 ] && img1020_t2
    PYTHONPATH=$PWD $PY scripts/replicate_paper.py --root=$HOME/bd_runs/fmnist \
      --teacher=$HOME/bd_runs/fmnist/teacher_e30 --selection_from=docs/results \
      --run --wait --steps=$([ "$pass" = 1 ] && echo $STEPS_A || echo $STEPS)
    sleep 20
  done
}
worker 0 > ~/bd_runs/logs/w0.log 2>&1 &
sleep 90
worker 1 > ~/bd_runs/logs/w1.log 2>&1 &
wait
