r"""The paper's small-data claims in miniature, as a list of sweeps (docs/results.md).

    # print every sweep command of the plan (nothing runs)
    python scripts/replicate_paper.py --teacher=$HOME/bd_runs/fmnist/teacher_e30 --root=$HOME/bd_runs/fmnist
    # run the plan in order; rerun to resume (finished cells are skipped)
    python scripts/replicate_paper.py ... --run [--steps=sel_supervised,sel_distill,e100]
    # tables and figures of what has finished, into docs/results/ and docs/figures/;
    # with --selection_from=docs/results, the finished cells recorded there count too
    # (another machine's): a step's record keeps its finished cells whose workdirs are gone
    python scripts/replicate_paper.py ... --collect [--selection_from=docs/results --update_doc=docs/results.md]
    # every step's cells that are neither finished here nor recorded, with each
    # started one's last logged epoch (nothing runs): what a note must list
    python scripts/replicate_paper.py ... --missing [--selection_from=docs/results]

Each step is one `python -m big_distill.sweep` call (printed as it runs), over
configs/fmnist_distill.py (or configs/fmnist_teacher.py for the weaker
teachers of claim 7). All cells of the 100-image setting share one root
(`ROOT/img100`), so a cell made by two steps (the lr selection's seed-0
300-epoch cell and the table's) runs once. The learning rate (and, for the
supervised arm, mixup on/off) of every later step is the one chosen by the
selection steps on validation (`val/student_top1`, 300 epochs, seed 0); it
is never looked up on test. The plan, cheapest complete rows first:

  sel_supervised  supervised: lr in LRS x mixup on/off, 300 epochs, seed 0
  sel_distill     every distillation arm x DISTILL_LRS, 300 epochs, seed 0
  e100, e300, e1000   every arm, 3 seeds, at that budget
  teachers        claim 7's weaker teachers: fmnist_teacher at 1 and 5 epochs
  hard            claim 6: function matching with loss=hard, 1,000 epochs, 3 seeds
  teacher_quality claim 7: function matching from the weaker teachers, 1,000 epochs, 3 seeds
  e3000           every arm, 3 seeds
  e10000          function matching, fixed teacher and supervised, 3 seeds
  lr_third        function matching and fixed at 10,000 epochs with lr/3, seed 0
  img1020         the 1,020-image setting: every arm, seed 0, 100/300/1,000 epochs

then claims 8-11's steps (`continued`, under ROOT/img100_t2 and
ROOT/img50000_t2, with img1020_t2: the 1,020-image setting's 9 cells that the
earlier machine did not finish, under ROOT/img1020_t2) and the ViT family's
(`vit_steps`, issue 25; under ROOT/vit_teacher and ROOT/vit_img100):

  sel_vit_teacher    the ViT teacher (fmnist_teacher.py:model=vit), lr in
                     VIT_TEACHER_LRS: the cell chosen on validation is the teacher
  sel_vit_to_bit     ViT teacher -> the BiT student: lr in VIT_LRS, 300 epochs, seed 0
  sel_bit_to_vit     the BiT teacher -> a ViT student: the same
  vit_to_bit_e1000, bit_to_vit_e1000   each at its chosen lr, 1,000 epochs, 3 seeds

A step gated by a selection appears in the pass after that selection
finished: rerun the same command (its runner loops) until nothing is left.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from big_distill import sweep  # pip install -e . (or PYTHONPATH=the checkout)
from big_distill.errors import UserError

REPO = Path(__file__).resolve().parents[1]

DISTILL = "configs/fmnist_distill.py"
TEACHER = "configs/fmnist_teacher.py"
# fix_rs and fix_ic_ens (precomputed fixed teachers) joined the plan after its
# first cells ran; the runner picks them up where it resumes.
ARMS = ("fixed", "independent", "consistent", "funmatch", "shampoo", "lowres",
        "fix_rs", "fix_ic_ens")
LRS = "0.001,0.003,0.01,0.03"
# The distillation arms' grid gained 0.1 on 2026-12-01 (12:25 UTC): at 0.03,
# the top of LRS, function matching, consistent, fixed and independent all had
# their best validation top-1. Decided on validation only, before any table
# cell of a distillation arm ran. (The supervised arm peaked inside LRS.)
DISTILL_LRS = LRS + ",0.1"
SEEDS = "0,1,2"
SELECT = "val/student_top1"
BUDGETS = (100, 300, 1000, 3000)


def plan(selected: dict[str, dict[str, str]] | None) -> list[dict]:
  """The steps: {name, config, grids, root (under ROOT), teacher?, needs_selection?}.

  `selected` maps each arm to its chosen fields ({'lr': ..} and for the
  supervised arm also {'mixup': ..}); steps that need it are left out (and
  listed as waiting) until the selection steps have finished.
  """
  base = f"{DISTILL}:images=100"
  steps = [
      dict(name="sel_supervised", config=base + ",epochs=300", root="img100", teacher=False,
           grids=[f"arm=supervised;mixup=0,1;lr={LRS};seed=0"]),
      dict(name="sel_distill", config=base + ",epochs=300", root="img100", teacher=True,
           grids=[f"arm={','.join(ARMS)};lr={DISTILL_LRS};seed=0"]),
  ]
  if not selected:
    return steps + continued(None) + vit_steps(None)

  def arm_grid(arm, extra=""):
    fields = ";".join(f"{k}={v}" for k, v in sorted(selected[arm].items()))
    return f"arm={arm};{fields}{extra}"

  every = ("supervised", *ARMS)
  for epochs in BUDGETS[:3]:
    steps.append(dict(name=f"e{epochs}", config=base + f",epochs={epochs}", root="img100",
                      teacher=True, grids=[arm_grid(a, f";seed={SEEDS}") for a in every]))
  steps += [
      dict(name="teachers", config=TEACHER, root="teachers", teacher=False,
           grids=["epochs=1,5"]),
      dict(name="hard", config=base + ",epochs=1000", root="img100", teacher=True,
           grids=[arm_grid("funmatch", f";loss=hard;seed={SEEDS}")]),
      dict(name="teacher_quality", config=base + ",epochs=1000", root="img100", teacher=False,
           grids=[arm_grid("funmatch", f";seed={SEEDS};config.t1_init=TEACHERS/epochs=1,"
                                       "TEACHERS/epochs=5")]),
      dict(name="e3000", config=base + ",epochs=3000", root="img100", teacher=True,
           grids=[arm_grid(a, f";seed={SEEDS}") for a in every]),
      # Claim 3 compares function matching with the supervised student at the same
      # budget, so the supervised arm runs at 10,000 too (added 2026-12-01 14:57
      # UTC, before any e1000-e10000 cell ran).
      dict(name="e10000", config=base + ",epochs=10000", root="img100", teacher=True,
           grids=[arm_grid(a, f";seed={SEEDS}") for a in ("funmatch", "fixed", "supervised")]),
      dict(name="lr_third", config=base + ",epochs=10000", root="img100", teacher=True,
           grids=[f"arm={a};lr={float(selected[a]['lr']) / 3:.6g};seed=0"
                  for a in ("funmatch", "fixed")]),
      dict(name="img1020", config=f"{DISTILL}:images=1020", root="img1020", teacher=True,
           grids=[arm_grid(a, ";epochs=100,300,1000;seed=0") for a in every]),
  ]
  return steps + continued(selected) + vit_steps(selected)


# Claims 8-11 (issue 27, docs/results.md), on the teachers retrained in session 8
# (ROOT/teacher_e30 and ROOT/teachers/epochs=1,5): their cells live under roots
# of their own, so that no cell of the earlier teacher is mixed with them.
# 10 added 2026-12-05 (14:20 UTC) by claim 8's written rule: the 300-epoch
# selection peaked at 3, the grid's top end (validation top-1 72.40% at 3,
# 67.65% at 1). The runner had already started table cells at lr 3 (against
# the rule's order); they count only if 3 stays the choice.
SHAMPOO_PAPER_LRS = "0.03,0.1,0.3,1,3,10"
SUP_ALL_LRS = "0.003,0.01,0.03"
SUP_ALL_EPOCHS = "10,30"
IMG100_T2, IMG_ALL_T2 = "img100_t2", "img50000_t2"
# The 1,020-image setting's cells that sessions 1-7 did not finish (9 of 27;
# docs/results.md, "The 1,020-image setting"): run with the new 30-epoch
# teacher under a root of their own, beside the 18 recorded cells of the old.
IMG1020_T2 = "img1020_t2"
IMG1020_MISSING = {"lowres": "100,300", "fix_rs": "100,300", "fix_ic_ens": "100,300,1000",
                   "shampoo": "300,1000"}


def continued(selected) -> list[dict]:
  """The steps of claims 8-11, cheapest first (scheduling only).

  `selected` also holds 'shampoo_paper' (its lr) and 'sup_all' (the supervised
  arm's lr and epochs on all 50,000 images) once their selection steps have
  finished; the steps that need one are left out until then.
  """
  base = f"{DISTILL}:images=100"
  base_all = f"{DISTILL}:images=50000"
  sel = [
      dict(name="sel_shampoo_paper", config=base + ",epochs=300", root=IMG100_T2, teacher=True,
           grids=[f"arm=shampoo_paper;lr={SHAMPOO_PAPER_LRS};seed=0"]),
      dict(name="sel_sup_all", config=base_all + ",mixup=0.2", root=IMG_ALL_T2, teacher=False,
           grids=[f"arm=supervised;lr={SUP_ALL_LRS};epochs={SUP_ALL_EPOCHS};seed=0"]),
  ]
  if not selected:
    return sel

  def grid(key, extra, arm=None):
    fields = ";".join(f"{k}={v}" for k, v in sorted(selected[key].items()))
    return f"arm={arm or key};{fields}{extra}"

  weaker = "config.t1_init=TEACHERS/epochs=1,TEACHERS/epochs=5"
  later = {
      "c8_shampoo_paper": lambda: dict(
          config=base, root=IMG100_T2, teacher=True,
          grids=[grid("shampoo_paper", f";epochs=100,300,1000,3000;seed={SEEDS}")]),
      "c8_adam": lambda: dict(config=base + ",epochs=3000", root=IMG100_T2, teacher=True,
                              grids=[grid("funmatch", f";seed={SEEDS}")]),
      "img1020_t2": lambda: dict(
          config=f"{DISTILL}:images=1020", root=IMG1020_T2, teacher=True,
          grids=[grid(a, f";epochs={e};seed=0") for a, e in IMG1020_MISSING.items()]),
      "c10_e1000": lambda: dict(config=base + ",epochs=1000", root=IMG100_T2, teacher=True,
                                grids=[grid("funmatch", f";seed={SEEDS}"),
                                       grid("funmatch", f";seed={SEEDS};{weaker}")]),
      "c11_sup_all": lambda: dict(config=base_all + ",mixup=0.2", root=IMG_ALL_T2, teacher=False,
                                  grids=[grid("sup_all", f";seed={SEEDS}", arm="supervised")]),
      "c9_e10000": lambda: dict(config=base + ",epochs=10000", root=IMG100_T2, teacher=True,
                                grids=[grid(a, f";seed={SEEDS}") for a in ("funmatch", "supervised")]),
      "c10_e10000": lambda: dict(config=base + ",epochs=10000", root=IMG100_T2, teacher=True,
                                 grids=[grid("funmatch", f";seed={SEEDS};{weaker}")]),
      # 15,625 steps of 64, as 10,000 epochs of the 100 images: 20 epochs of 50,000.
      "c11_fm_all": lambda: dict(config=base_all + ",epochs=20", root=IMG_ALL_T2, teacher=True,
                                 grids=[grid("funmatch", f";seed={SEEDS}")]),
      "c9_e30000": lambda: dict(config=base + ",epochs=30000", root=IMG100_T2, teacher=True,
                                grids=[grid(a, f";seed={SEEDS}") for a in ("funmatch", "supervised")]),
  }
  needs = {"c8_shampoo_paper": "shampoo_paper", "c11_sup_all": "sup_all"}
  return sel + [dict(name=n, **make()) for n, make in later.items()
                if needs.get(n, "funmatch") in selected]


# The ViT family in the miniature (issue 25, docs/results.md "ViT in the
# miniature"), under roots of its own. The ViT teacher is the cell of
# sel_vit_teacher chosen on validation (its workdir: ROOT/VIT_TEACHER_ROOT/<cell>);
# the BiT teacher is --teacher, as for every other step.
VIT = "configs/fmnist_vit.py"
VIT_TEACHER_LRS = "0.001,0.003"
VIT_TEACHER_EPOCHS = 3
VIT_LRS = "0.003,0.01,0.03"
VIT_TEACHER_ROOT, VIT_ROOT = "vit_teacher", "vit_img100"


def vit_teacher_cell(lr: str) -> str:
  """The name (and workdir under ROOT/VIT_TEACHER_ROOT) of the ViT teacher at `lr`."""
  return sweep.expand(f"{TEACHER}:model=vit,epochs={VIT_TEACHER_EPOCHS}", [f"lr={lr}"])[0].name


def vit_steps(selected) -> list[dict]:
  """The ViT family's steps whose selections are made (`selected` may be {} or None).

  `selected` holds 'vit_teacher', 'vit_to_bit' and 'bit_to_vit' ({'lr': ..})
  once their selection steps have finished.
  """
  selected = selected or {}
  to_bit = f"{VIT}:images=100,student=bit,teacher=vit"
  to_vit = f"{VIT}:images=100,student=vit,teacher=bit"
  steps = [dict(name="sel_vit_teacher", config=f"{TEACHER}:model=vit,epochs={VIT_TEACHER_EPOCHS}",
                root=VIT_TEACHER_ROOT, teacher=False, grids=[f"lr={VIT_TEACHER_LRS}"]),
           dict(name="sel_bit_to_vit", config=to_vit + ",epochs=300", root=VIT_ROOT, teacher=True,
                grids=[f"arm=funmatch;lr={VIT_LRS};seed=0"])]
  if "vit_teacher" in selected:
    vit_teacher = f"{VIT_TEACHER_ROOT}/{vit_teacher_cell(selected['vit_teacher']['lr'])}"
    steps.append(dict(name="sel_vit_to_bit", config=to_bit + ",epochs=300", root=VIT_ROOT,
                      teacher=False, t1=vit_teacher, grids=[f"arm=funmatch;lr={VIT_LRS};seed=0"]))
    if "vit_to_bit" in selected:
      steps.append(dict(name="vit_to_bit_e1000", config=to_bit + ",epochs=1000", root=VIT_ROOT,
                        teacher=False, t1=vit_teacher,
                        grids=[f"arm=funmatch;lr={selected['vit_to_bit']['lr']};seed={SEEDS}"]))
  if "bit_to_vit" in selected:
    steps.append(dict(name="bit_to_vit_e1000", config=to_vit + ",epochs=1000", root=VIT_ROOT,
                      teacher=True,
                      grids=[f"arm=funmatch;lr={selected['bit_to_vit']['lr']};seed={SEEDS}"]))
  return steps


def teacher_of(step: dict, root: Path, teacher: str) -> str | None:
  """The teacher workdir a step's cells read: its own (`t1`, under `root`), the
  BiT teacher `teacher`, or None (trained with labels, or weaker teachers by grid)."""
  if step.get("t1"):
    return str(root / step["t1"])
  return teacher if step["teacher"] else None


def sweep_args(step: dict, root: Path, teacher: str) -> list[str]:
  args = [f"--config={step['config']}"]
  for g in step["grids"]:
    args.append(f"--sweep={g.replace('TEACHERS/', str(root / 'teachers') + '/')}")
  args.append(f"--root={root / step['root']}")
  t1 = teacher_of(step, root, teacher)
  if t1:
    args.append(f"--config.t1_init={t1}")
  return args


# What each selection step chooses, and under which key of `selected`.
SEL_OVER = {"sel_supervised": ["lr", "mixup"], "sel_sup_all": ["lr", "epochs"]}  # Else ["lr"].
SEL_KEY = {"sel_sup_all": "sup_all", "sel_vit_teacher": "vit_teacher",
           "sel_vit_to_bit": "vit_to_bit", "sel_bit_to_vit": "bit_to_vit"}  # Else the cell's arm.
# The selections every later step needs; the others only gate their own steps.
REQUIRED = ("sel_supervised", "sel_distill")


def selection(root: Path, log=print, recorded: Path | None = None
              ) -> dict[str, dict[str, str]] | None:
  """Each arm's lr (and the supervised arm's mixup) chosen on validation; None until done.

  A selection step counts once all its cells have finished under `root`. A
  step whose cells are not all there is read from its collected record
  `recorded/<step>/summary.json` when given (the choice made on validation
  by an earlier session, whose cells are gone), and logged as such: a
  REQUIRED step's record as it is, another step's only if the record has
  finished every one of its cells (a partial selection chooses nothing).
  """
  chosen, seen = {}, set()
  while True:
    # plan(None)'s selections, then those that a selection made here gates
    # (the ViT teacher's students): each once.
    todo = [s for s in plan(None) + vit_steps(chosen)
            if s["name"].startswith("sel_") and s["name"] not in seen]
    if not todo:
      break
    step = todo[0]
    seen.add(step["name"])
    cells = sweep.expand(step["config"], step["grids"])
    cell_root = root / step["root"]
    record = recorded / step["name"] / "summary.json" if recorded else None
    if all(sweep.finished(str(cell_root / c.name)) for c in cells):
      picks = sweep.collect(str(cell_root), str(root / "collect" / step["name"]),
                            select_metric=SELECT, over=SEL_OVER.get(step["name"], ["lr"]),
                            names=[c.name for c in cells], log=lambda *_: None)["selected"]
      source = ""
    elif record and record.exists() and (
        step["name"] in REQUIRED
        or {c["name"] for c in _record_cells(record)} >= {c.name for c in cells}):
      picks, source = json.loads(record.read_text())["selected"], f" (recorded in {record})"
    elif step["name"] in REQUIRED:
      return None
    else:
      continue
    for ch in picks:
      # One arm: not a varying field.
      arm = SEL_KEY.get(step["name"]) or ch["within"].get("arm", cells[0].args["arm"])
      chosen[arm] = ch["chosen"]
      log(f"# {step['name']}: arm={arm}: "
          + ", ".join(f"{k}={v}" for k, v in ch["chosen"].items())
          + f" ({SELECT} {ch['value']:.4f}, among {ch['candidates']}){source}")
  return chosen


def selection_running_elsewhere(root: Path) -> list[str]:
  """The unfinished cells of the REQUIRED selections that another runner holds now."""
  busy = []
  for step in plan(None):
    if step["name"] not in REQUIRED:
      continue  # The later selections gate only their own steps: no need to wait.
    for c in sweep.expand(step["config"], step["grids"]):
      wd = str(root / step["root"] / c.name)
      if not sweep.finished(wd) and sweep.locked(wd):
        busy.append(c.name)
  return busy


def run_step(step: dict, root: Path, teacher: str, python: str, extra=()) -> int:
  cmd = [python, "-m", "big_distill.sweep", *sweep_args(step, root, teacher), *extra, "--run"]
  print(f"\n# ---- step {step['name']}\n$ {shlex.join(cmd)}", flush=True)
  return subprocess.run(cmd, cwd=REPO, check=False).returncode


def collect_all(root: Path, results: Path, figures: Path, selected) -> None:
  """Every step's tables into results/<step>/ and its figures into figures/."""
  results.mkdir(parents=True, exist_ok=True)
  figures.mkdir(parents=True, exist_ok=True)
  for step in plan(selected):
    names = [c.name for c in sweep.expand(step["config"], [
        g.replace("TEACHERS/", str(root / "teachers") + "/") for g in step["grids"]])]
    plots = []
    if step["name"].startswith("sel_"):
      plots = [f"{SELECT}:lr"]
    elif step["name"] != "teachers":
      plots = [f"{SELECT}:step"]
    record = results / step["name"] / "summary.json"
    lost = _lost_cells(root / step["root"], record, names)
    if lost and not (root / step["root"]).is_dir():
      print(f"# {step['name']}: its record is kept: none of its cells is under "
            f"{root / step['root']}")
      continue
    if lost:  # Another machine's finished cells join the new ones from their record.
      print(f"# {step['name']}: {len(lost)} finished cells from its record (another machine's): "
            f"{', '.join(lost[:2])}{' ...' if len(lost) > 2 else ''}")
    # Collected aside, then moved in: a step that fails half-way (no cell has
    # logged yet) leaves its record as it was.
    out, tmp = results / step["name"], results / f".{step['name']}.collecting"
    shutil.rmtree(tmp, ignore_errors=True)
    selects = step["name"].startswith("sel_")
    try:
      s = sweep.collect(str(root / step["root"]), str(tmp),
                        select_metric=SELECT if selects else None,
                        over=SEL_OVER.get(step["name"], ["lr"]) if selects else None,
                        plots=plots, names=names, log=lambda *_: None,
                        recorded=_record_cells(record))  # A cell finished here wins.
    except UserError as e:
      print(f"# {step['name']}: nothing to collect yet ({e})")
      shutil.rmtree(tmp, ignore_errors=True)
      continue
    # The per-cell curves and figures are large: keep them out of the JSON in git.
    for c in s["cells"]:
      if not c.get("recorded"):  # A record's workdir is relative already.
        c["workdir"] = os.path.relpath(c["workdir"], root)
    joined = any(c.get("recorded") for c in s["cells"])
    drawn, s["figures"] = s["figures"], []
    for p in drawn:  # Figures live in figures/ only.
      target = figures / f"{step['name']}_{Path(p).name}"
      s["figures"].append(os.path.relpath(target, REPO) if target.is_relative_to(REPO)
                          else str(target))
      if joined and target.exists() and plots == [f"{SELECT}:step"]:
        # Curves are drawn from workdirs: the record's cells have none here.
        print(f"# {step['name']}: {target.name} kept (it draws the recorded cells' curves; "
              "the new cells' are in their workdirs)")
      else:
        shutil.move(p, target)
    (tmp / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    out.mkdir(exist_ok=True)
    for f in tmp.glob("*.*"):
      if f.suffix in (".json", ".csv", ".md"):
        (out / f.name).write_text(portable(f.read_text()))
    shutil.rmtree(tmp)
    done = len(names) - len(s["unfinished"]) - len(s["not_started"])
    print(f"# {step['name']}: {done}/{len(names)} cells finished -> {results / step['name']}")


def _record_cells(record: Path) -> list[dict]:
  """The finished cells of a step's collected summary.json ([] if it has none)."""
  if not record.exists():
    return []
  return [c for c in json.loads(record.read_text()).get("cells", []) if c["finished"]]


def _lost_cells(cell_root: Path, record: Path, names) -> list[str]:
  """The cells that `record` (a step's collected summary.json) has finished and
  `cell_root` has not: collecting there again would drop them from the record."""
  recorded = [c["name"] for c in _record_cells(record) if c["name"] in names]
  here = {c["name"] for c in sweep.read_cells(str(cell_root), names) if c["finished"]} \
      if recorded and cell_root.is_dir() else set()
  return [n for n in recorded if n not in here]


# A plan step whose unfinished cells run as another step (its own teacher and root).
RUN_AS = {"img1020": "img1020_t2"}


def last_epoch(workdir: Path) -> float | None:
  """The last `progress/epoch` a cell's metrics.jsonl logged (None: none yet)."""
  path = workdir / "metrics.jsonl"
  epoch = None
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        epoch = json.loads(line).get("progress/epoch", epoch)
      except json.JSONDecodeError:
        pass  # A line being written now.
  return epoch


def missing(root: Path, selected, recorded: Path | None = None, only=()) -> list[dict]:
  """The plan's steps and their cells that no finished run holds.

  One row per step: {step, cells (how many), done (finished here or in a
  record under `recorded`), todo: [{name, running (another sweep holds its
  lock now), epoch (its last logged epoch, None if not started)}]}; a step of
  RUN_AS has no todo, and names the step its other cells run as. A step
  whose selection has not been made is not in `plan(selected)`: it is listed
  with cells None.
  """
  rows, planned = [], plan(selected)
  names = {s["name"] for s in planned}
  for step in planned:
    if only and step["name"] not in only:
      continue
    cells = sweep.expand(step["config"], step["grids"])
    done = set(recorded_cells(recorded, step["root"]))
    todo = []
    if step["name"] in RUN_AS:
      done_here = [c for c in cells
                   if sweep.finished(str(root / step["root"] / c.name)) or c.name in done]
      rows.append(dict(step=step["name"], cells=len(cells), done=len(done_here), todo=[],
                       run_as=RUN_AS[step["name"]]))
      continue
    for c in cells:
      wd = root / step["root"] / c.name
      if sweep.finished(str(wd)) or c.name in done:
        continue
      todo.append(dict(name=c.name, running=sweep.locked(str(wd)), epoch=last_epoch(wd)))
    rows.append(dict(step=step["name"], cells=len(cells), done=len(cells) - len(todo),
                     todo=todo))
  # The steps a selection gates, not planned yet: known by name only.
  everything = plan({arm: {"lr": "1", "epochs": "1"} for arm in
                     ("supervised", *ARMS, "shampoo_paper", "sup_all", "vit_teacher",
                      "vit_to_bit", "bit_to_vit")})
  for step in everything:
    if step["name"] not in names and (not only or step["name"] in only):
      rows.append(dict(step=step["name"], cells=None, done=0, todo=[]))
  return rows


def missing_text(rows) -> str:
  """`missing`'s rows as the lines `--missing` prints (complete steps: one count)."""
  out = []
  for r in rows:
    if r["cells"] is None:
      out.append(f"{r['step']}: waits for its selection")
      continue
    out.append(f"{r['step']}: {r['done']} of {r['cells']} finished"
               + (f" (the others run as {r['run_as']})" if r.get("run_as") else ""))
    for c in r["todo"]:
      where = ("running, " if c["running"] else "") + (
          f"at epoch {c['epoch']:g}" if c["epoch"] is not None else "not started")
      out.append(f"  {c['name']}  ({where})")
  return "\n".join(out) + "\n"


def portable(text: str, home: str | None = None) -> str:
  """Commands as anyone can rerun them: `python` for this machine's interpreter
  path, `$HOME` for its home folder (the sweep records the absolute paths)."""
  text = re.sub(r"(?<![\w$/.-])/[^\s\"',]*/bin/python3?(?![\w.])", "python", text)
  home = (home or str(Path.home())).rstrip("/")
  return re.sub(re.escape(home) + r"(?=/)", "$HOME", text) if home else text


def teacher_quality_figure(root: Path, figures: Path, selected, recorded: Path | None = None):
  """Claim 7: student validation cross-entropy against the teacher's; (path, points) or None.

  points: [(teacher val/t1_loss, student val/student_loss mean, std, seeds)] by
  teacher, from `teacher_quality_points` (claim 7's own), any number of seeds.
  """
  from big_distill import plotting  # pylint: disable=g-import-not-at-top
  points = [p[:4] for p in teacher_quality_points(table_groups(root, selected,
                                                                recorded=recorded))]
  if len(points) < 2:
    return None
  path = plotting.plot_against_field(
      {"function matching, 1,000 epochs": points}, str(figures / "claim7_teacher_quality.png"),
      field="teacher validation cross-entropy (val/t1_loss)", metric="val/student_loss")
  return path, points


# ---- The claims, computed from the finished cells ---------------------------

TOP1 = {"val": "val/student_top1", "test": "test/student_top1"}
# The budgets of the 100-image table, and each claim's own (docs/results.md).
TABLE_BUDGETS = (*BUDGETS, 10000)


def recorded_cells(recorded: Path | None, setting: str) -> dict[str, dict]:
  """The finished cells of `setting` in the collected records (every
  `recorded/<step>/summary.json`), by name: what an earlier session's machine
  ran, whose workdirs are gone."""
  out = {}
  for summary in sorted(recorded.glob("*/summary.json")) if recorded else ():
    for c in json.loads(summary.read_text()).get("cells", []):
      if c["finished"] and c.get("workdir", "").split("/")[0] == setting:
        out[c["name"]] = c
  return out


def finished_cells(root: Path, setting: str, recorded: Path | None = None) -> list[dict]:
  """The finished cells of ROOT/`setting`, and those of its collected records
  that are not there (a cell finished here wins over its record)."""
  cells = recorded_cells(recorded, setting)
  if (root / setting).is_dir():
    cells.update({c["name"]: c for c in sweep.read_cells(str(root / setting)) if c["finished"]})
  return list(cells.values())


def table_groups(root: Path, selected, setting: str | tuple[str, ...] = "img100",
                 recorded: Path | None = None, key_of=None) -> dict[tuple[str, int, str], dict]:
  """One setting's finished cells, by (arm, epochs, variant): n, mean, std.

  setting: the folder(s) under `root` ('img100', the table and the claims;
  'img1020' and IMG1020_T2, the 1,020-image setting; IMG100_T2 and
  IMG_ALL_T2, claims 8-11), with the finished cells of their collected
  records in `recorded`. Only cells at the arm's chosen fields count (its
  lr, the supervised arm's mixup); `key_of(arm)` names the `selected` entry
  an arm's cells are judged by (claim 11's supervised arm on all images:
  'sup_all'), and their key in the result. variant: '' (the plan's cells),
  'hard' (claim 6) or the teacher's workdir name (the weaker teachers).
  """
  settings = (setting,) if isinstance(setting, str) else setting
  cells = [c for s in settings for c in finished_cells(root, s, recorded)]
  keep = []
  for c in cells:
    f = c["fields"]
    arm = f.get("arm", "funmatch")
    arm = key_of(arm) if key_of else arm
    if arm not in selected or any(f.get(k) != v for k, v in selected[arm].items()):
      continue
    variant = "hard" if f.get("loss") == "hard" else ""
    if "config.t1_init" in f:
      variant = Path(f["config.t1_init"]).name
    keep.append({**c, "fields": {"arm": arm, "epochs": str(int(float(f["epochs"]))),
                                 "variant": variant, "seed": f.get("seed", "0")}})
  out = {}
  for g in sweep.group(keep, ["arm", "epochs", "variant"]):
    f = g["fields"]
    out[(f["arm"], int(f["epochs"]), f["variant"])] = g
  return out


def _stat(groups, arm, epochs, metric, variant=""):
  """(mean, std, n) of `metric` over the seeds of one table cell, or None."""
  g = groups.get((arm, epochs, variant))
  st = g and g["metrics"].get(metric)
  return (st["mean"], st["std"], st["n"]) if st else None


def _full(groups, arms, epochs, metric, variant=""):
  """The arms' stats at `epochs` if every one has 3 seeds, else None."""
  stats = [_stat(groups, a, epochs, metric, variant) for a in arms]
  return stats if all(s and s[2] >= 3 for s in stats) else None


def _longest(groups, arms, metric, budgets=TABLE_BUDGETS, variant=""):
  """The longest budget at which every arm has 3 seeds of `metric`, or None."""
  done = [b for b in budgets if _full(groups, arms, b, metric, variant)]
  return max(done) if done else None


def _pct(x):
  return f"{100 * x:.2f}"


def _ms(st):
  return f"{100 * st[0]:.2f} ± {100 * st[1]:.2f}"


def _beats(a, b):
  """a's mean above b's by more than 2 std (the larger of the two)."""
  return a[0] - b[0] > 2 * max(a[1], b[1])


def _claim1(groups, epochs):
  m = TOP1["test"]
  fm, fx = _full(groups, ("funmatch", "fixed"), epochs[0], m) or (None, None)
  co, ind = _full(groups, ("consistent", "independent"), epochs[1], m) or (None, None)
  if fm is None or co is None:
    return None
  ok = _beats(fm, fx) and _beats(co, ind)
  return ok, (f"test top-1 at {epochs[0]} epochs: FM {_ms(fm)} vs fixed {_ms(fx)} "
              f"(diff {_pct(fm[0] - fx[0])}, 2 std {_pct(2 * max(fm[1], fx[1]))}); at {epochs[1]}: "
              f"consistent {_ms(co)} vs independent {_ms(ind)} (diff {_pct(co[0] - ind[0])}, "
              f"2 std {_pct(2 * max(co[1], ind[1]))})")


def _claim2(groups, lo, hi):
  m = TOP1["val"]
  got = _full(groups, ("funmatch", "fixed"), lo, m), _full(groups, ("funmatch", "fixed"), hi, m)
  if not all(got):
    return None
  (fm0, fx0), (fm1, fx1) = got
  gain_fm, gain_fx = fm1[0] - fm0[0], fx1[0] - fx0[0]
  ok = _beats(fm1, fm0) and gain_fx < gain_fm
  return ok, (f"validation top-1 {lo} -> {hi} epochs: FM {_ms(fm0)} -> {_ms(fm1)} "
              f"(gain {_pct(gain_fm)}, 2 std {_pct(2 * max(fm0[1], fm1[1]))}); fixed {_ms(fx0)} -> "
              f"{_ms(fx1)} (gain {_pct(gain_fx)})")


def _claim3(groups, epochs):
  m = TOP1["test"]
  got = _full(groups, ("funmatch", "supervised"), epochs, m)
  teacher = _stat(groups, "funmatch", epochs, "test/t1_top1")
  if not got or not teacher:
    return None
  fm, sup = got
  closed = (fm[0] - sup[0]) / (teacher[0] - sup[0])
  return closed >= 0.8, (f"test top-1 at {epochs} epochs: supervised {_ms(sup)}, FM {_ms(fm)}, "
                         f"teacher {_pct(teacher[0])}: FM closes {100 * closed:.1f}% of the gap")


def _claim4(groups, adam_epochs):
  m = TOP1["val"]
  adam = _stat(groups, "funmatch", adam_epochs, m)
  if not adam or adam[2] < 3:
    return None
  reached = [b for b in BUDGETS if b <= adam_epochs and _full(groups, ("shampoo",), b, m)
             and _stat(groups, "shampoo", b, m)[0] >= adam[0]]
  tried = [b for b in BUDGETS if b <= adam_epochs and _full(groups, ("shampoo",), b, m)]
  curve = ", ".join(f"{b}: {_ms(_stat(groups, 'shampoo', b, m))}" for b in tried)
  text = (f"Adam's validation top-1 at {adam_epochs} epochs {_ms(adam)}; Shampoo {curve}; "
          + (f"Shampoo reaches it at {min(reached)} epochs" if reached else
             "Shampoo does not reach it at any budget run"))
  return bool(reached) and min(reached) <= adam_epochs / 2, text


def _claim5(groups, epochs):
  m = TOP1["test"]
  got = _full(groups, ("funmatch", "lowres"), epochs, m)
  if not got:
    return None
  fm, low = got
  return fm[0] - low[0] <= 0.02, (f"test top-1 at {epochs} epochs: 32px {_ms(fm)}, 24px "
                                  f"{_ms(low)} (32px - 24px = {_pct(fm[0] - low[0])} points)")


def _claim6(groups, epochs=1000):
  m = "test_cal/student_ece"
  kl, hard = _stat(groups, "funmatch", epochs, m), _stat(groups, "funmatch", epochs, m, "hard")
  if not (kl and hard and kl[2] >= 3 and hard[2] >= 3):
    return None
  return kl[0] < 0.05 and hard[0] > 2 * kl[0], (
      f"test ECE at {epochs} epochs: kl {kl[0]:.4f} ± {kl[1]:.4f}, hard {hard[0]:.4f} ± "
      f"{hard[1]:.4f} (hard / kl = {hard[0] / kl[0]:.2f})")


def teacher_quality_points(groups, epochs=1000, min_seeds=1):
  """Claim 7's points, by teacher, sorted: (teacher val/t1_loss mean, student
  val/student_loss mean, its std, seeds, teacher name) of the function-matching
  cells at `epochs` (the 30-epoch teacher's are the table's own cells)."""
  points = []
  for (arm, e, variant), g in groups.items():
    if arm == "funmatch" and e == epochs and variant != "hard":
      st, t = g["metrics"].get("val/student_loss"), g["metrics"].get("val/t1_loss")
      if st and t and st["n"] >= min_seeds:
        points.append((t["mean"], st["mean"], st["std"], st["n"], variant or "teacher_e30"))
  return sorted(points)


def _claim7(groups, epochs=1000):
  points = teacher_quality_points(groups, epochs, min_seeds=3)
  if len(points) < 3:
    return None
  ok = all(a[1] < b[1] for a, b in zip(points, points[1:]))
  return ok, ("validation cross-entropy, teacher -> student (mean ± std): " + "; ".join(
      f"{name}: {t:.4f} -> {s:.4f} ± {sd:.4f}" for t, s, sd, _, name in points))


CLAIMS = (
    (1, "FM > fixed (10,000 epochs) and consistent > independent (3,000), by > 2 std, test"),
    (2, "FM keeps improving 1,000 -> 10,000 epochs (> 2 std, validation); fixed gains less"),
    (3, "FM closes >= 80% of the supervised-teacher gap at 10,000 epochs, test"),
    (4, "Shampoo reaches Adam's validation top-1 at 3,000 epochs in <= 1/2 the epochs"),
    (5, "the 24px student within 2 points of the 32px one at 3,000 epochs, test"),
    (6, "at 1,000 epochs: test ECE of kl < 0.05 and of hard > 2x kl"),
    (7, "at 1,000 epochs: student validation CE increases with teacher validation CE"),
)


def answer_claims(groups) -> list[dict]:
  """Each claim: answer at its own budget (or 'not run') and the interim reading.

  The interim rule (docs/results.md, written before the table cells ran): the
  same comparison at the longest budget where every arm it compares has 3
  seeds; claim 2: 1,000 -> the longest such budget above it, else 300 -> 1,000;
  claim 4: Adam at that budget N, Shampoo within N/2.
  """
  val, test = TOP1["val"], TOP1["test"]
  own = {1: lambda: _claim1(groups, (10000, 3000)), 2: lambda: _claim2(groups, 1000, 10000),
         3: lambda: _claim3(groups, 10000), 4: lambda: _claim4(groups, 3000),
         5: lambda: _claim5(groups, 3000), 6: lambda: _claim6(groups),
         7: lambda: _claim7(groups)}

  def interim(n):
    if n == 1:
      b = _longest(groups, ("funmatch", "fixed", "consistent", "independent"), test)
      return b, b and _claim1(groups, (b, b))
    if n == 2:
      above = [b for b in TABLE_BUDGETS if b > 1000 and _full(groups, ("funmatch", "fixed"), b, val)]
      lo, hi = (1000, max(above)) if above else (300, 1000)
      return hi, _claim2(groups, lo, hi)
    if n == 3:
      b = _longest(groups, ("funmatch", "supervised"), test)
      return b, b and _claim3(groups, b)
    if n == 4:
      b = _longest(groups, ("funmatch", "shampoo"), val, BUDGETS)
      return b, b and _claim4(groups, b)
    if n == 5:
      b = _longest(groups, ("funmatch", "lowres"), test)
      return b, b and _claim5(groups, b)
    return None, None

  return _answer(CLAIMS, own, interim)


def _answer(claims, own, interim) -> list[dict]:
  """Rows of claims: each `own[n]()` at its budget, else 'not run' with `interim(n)`'s
  (budget, reading) beside it."""
  out = []
  for n, text in claims:
    got = own[n]()
    row = {"claim": n, "text": text,
           "answer": "not run" if got is None else ("holds" if got[0] else "does not hold"),
           "numbers": got[1] if got else "", "interim": None}
    if got is None:
      budget, reading = interim(n)
      if reading:
        row["interim"] = {"epochs": budget, "answer": "holds" if reading[0] else "does not hold",
                          "numbers": reading[1]}
    out.append(row)
  return out


# ---- Claims 8-11 (docs/results.md), on the new teachers' cells ----------------

CLAIMS_8_11 = (
    ("8", "the paper's Shampoo reaches Adam's 3,000-epoch validation top-1 within <= 1,500 epochs"),
    ("9", "FM at 30,000 epochs beats 10,000 (validation, > 2 std); gap closed on test at both"),
    ("10", "at 10,000 epochs the 30-epoch teacher's student beats the 5- and 1-epoch "
           "teachers' (validation, > 2 std)"),
    ("11a", "supervised on all 50,000 images within 2 points of the teacher (validation)"),
    ("11b", "FM on all 50,000 images (the steps of 10,000 epochs of 100) closes >= 90% of "
            "the gap, test"),
)
WEAKER = ("epochs=5", "epochs=1")  # The weaker teachers' workdirs (claim 10's variants).


def _claim8(g, adam_epochs=3000, arm="shampoo_paper"):
  """Decided once Adam's `adam_epochs` cells and enough of `arm`'s budgets
  have 3 seeds: the first budget that reaches Adam with every budget below it
  run, or every budget up to adam_epochs / 2 run."""
  m = TOP1["val"]
  adam = _stat(g, "funmatch", adam_epochs, m)
  if not adam or adam[2] < 3:
    return None
  done = {b: _stat(g, arm, b, m) for b in BUDGETS if _full(g, (arm,), b, m)}
  reached = sorted(b for b, st in done.items() if st[0] >= adam[0])
  first = next((b for b in reached if all(c in done for c in BUDGETS if c < b)), None)
  if first is None and not all(b in done for b in BUDGETS if b <= adam_epochs / 2):
    return None
  curve = ", ".join(f"{b}: {_ms(st)}" for b, st in sorted(done.items()))
  return first is not None and first <= adam_epochs / 2, (
      f"Adam (function matching) at {adam_epochs} epochs {_ms(adam)}; {arm} {curve}; "
      + (f"{arm} reaches it at {first} epochs" if first else f"{arm} does not reach it "
         f"at any budget run up to {adam_epochs // 2}"))


def _gap_closed(g100, epochs, fm=None):
  """`(FM - sup) / (teacher - sup)` on test at `epochs` (means), and its text;
  `fm`: another FM stat than g100's at `epochs` (claim 11b's)."""
  m = TOP1["test"]
  sup = _full(g100, ("supervised",), epochs, m)
  fm = fm or (_full(g100, ("funmatch",), epochs, m) or [None])[0]
  teacher = _stat(g100, "funmatch", epochs, "test/t1_top1")
  if not (sup and fm and teacher):
    return None
  closed = (fm[0] - sup[0][0]) / (teacher[0] - sup[0][0])
  return closed, (f"supervised {_ms(sup[0])}, FM {_ms(fm)}, teacher {_pct(teacher[0])}: "
                  f"{100 * closed:.1f}% of the gap")


def _claim9(g, lo=10000, hi=30000):
  m = TOP1["val"]
  a, b = _full(g, ("funmatch",), lo, m), _full(g, ("funmatch",), hi, m)
  if not (a and b):
    return None
  gaps = [f"test at {e}: {gap[1]}" for e in (lo, hi) if (gap := _gap_closed(g, e))]
  return _beats(b[0], a[0]), (
      f"validation top-1 {lo} -> {hi} epochs: FM {_ms(a[0])} -> {_ms(b[0])} (gain "
      f"{_pct(b[0][0] - a[0][0])}, 2 std {_pct(2 * max(a[0][1], b[0][1]))})"
      + "".join(f"; {x}" for x in gaps))


def _claim10(g, epochs=10000):
  m = TOP1["val"]
  strong = _stat(g, "funmatch", epochs, m)
  weak = [_stat(g, "funmatch", epochs, m, v) for v in WEAKER]
  if not all(st and st[2] >= 3 for st in (strong, *weak)):
    return None
  return all(_beats(strong, w) for w in weak), (
      f"validation top-1 at {epochs} epochs, by teacher: 30 epochs {_ms(strong)}; " + "; ".join(
          f"{v.split('=')[1]} epochs {_ms(w)} (diff {_pct(strong[0] - w[0])}, 2 std "
          f"{_pct(2 * max(strong[1], w[1]))})" for v, w in zip(WEAKER, weak)))


def _teacher_val(*groups):
  """The 30-epoch teacher's validation top-1 (every FM cell logs it)."""
  for g in groups:
    for (arm, _, variant), grp in sorted(g.items()):
      st = grp["metrics"].get("val/t1_top1")
      if arm == "funmatch" and not variant and st:
        return st["mean"]
  return None


def _claim11a(g100, gall, sup_epochs):
  sup = _stat(gall, "sup_all", sup_epochs, TOP1["val"]) if sup_epochs else None
  teacher = _teacher_val(g100, gall)
  if not (sup and sup[2] >= 3 and teacher):
    return None
  return teacher - sup[0] <= 0.02, (
      f"validation top-1: supervised on 50,000 images ({sup_epochs} epochs) {_ms(sup)}, "
      f"teacher {_pct(teacher)} ({_pct(teacher - sup[0])} points below)")


def _claim11b(g100, gall, epochs=20, sup_epochs=10000):
  fm = _full(gall, ("funmatch",), epochs, TOP1["test"])
  got = fm and _gap_closed(g100, sup_epochs, fm[0])
  if not got:
    return None
  return got[0] >= 0.9, (f"test top-1: FM on 50,000 images ({epochs} epochs) against the "
                         f"100-image supervised student at {sup_epochs} epochs: {got[1]}")


def answer_claims_8_11(g100, gall, selected) -> list[dict]:
  """Claims 8-11, each at its own budget, else 'not run' with its interim reading:
  claim 8 at the longest budget N where both arms have 3 seeds (Shampoo within
  N/2); claim 9 from the longest FM budget below the longest to it; claim 10
  at 1,000 epochs (docs/results.md)."""
  sup_epochs = int((selected.get("sup_all") or {}).get("epochs", 0))
  own = {"8": lambda: _claim8(g100), "9": lambda: _claim9(g100),
         "10": lambda: _claim10(g100), "11a": lambda: _claim11a(g100, gall, sup_epochs),
         "11b": lambda: _claim11b(g100, gall)}

  def interim(n):
    val = TOP1["val"]
    if n == "8":
      b = _longest(g100, ("funmatch", "shampoo_paper"), val, BUDGETS)
      return b, b and _claim8(g100, b)
    if n == "9":
      ran = [b for b in (*TABLE_BUDGETS, 30000) if _full(g100, ("funmatch",), b, val)]
      return (ran[-1], _claim9(g100, ran[-2], ran[-1])) if len(ran) >= 2 else (None, None)
    if n == "10":
      return 1000, _claim10(g100, 1000)
    return None, None

  return _answer(CLAIMS_8_11, own, interim)


def claims_markdown(rows) -> str:
  lines = ["| claim | answer | numbers |", "|---|---|---|"]
  for r in rows:
    answer, numbers = r["answer"], r["numbers"]
    if r["interim"]:
      i = r["interim"]
      answer += f"; interim ({i['epochs']} epochs): {i['answer']}"
      numbers = i["numbers"]
    lines.append(f"| {r['claim']}. {r['text']} | {answer} | {numbers} |")
  return "\n".join(lines) + "\n"


ARM_ORDER = ("supervised", *ARMS)


def table_markdown(groups, split: str, seeds: int = 3, arms=ARM_ORDER) -> str:
  """Arms x budgets: `split` top-1 in %, mean ± std over the seeds (n if not `seeds`)."""
  budgets = sorted({e for (arm, e, v) in groups if not v and arm in arms})
  if not budgets:
    return "(no finished cell at a chosen lr yet)\n"
  lines = ["| arm | " + " | ".join(f"{b} epochs" for b in budgets) + " |",
           "|---|" + "---|" * len(budgets)]
  for arm in arms:
    cells = []
    for b in budgets:
      st = _stat(groups, arm, b, TOP1[split])
      cells.append("" if not st else (_ms(st) if seeds > 1 else _pct(st[0]))
                   + ("" if st[2] == seeds else f" (n={st[2]})"))
    if any(cells):
      lines.append(f"| {arm} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def update_blocks(path: Path, blocks: dict[str, str]) -> list[str]:
  """Rewrites each `<!-- NAME: begin -->` ... `<!-- NAME: end -->` block of the
  Markdown file `path` with blocks[NAME]; returns the names it found."""
  text = path.read_text()
  found = []
  for name, body in blocks.items():
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    i, j = text.find(begin), text.find(end)
    if 0 <= i < j:
      text = text[:i + len(begin)] + "\n" + body.rstrip("\n") + "\n" + text[j:]
      found.append(name)
  path.write_text(text)
  return found


def _budget_lines(groups, line_of) -> dict[str, list]:
  """{label: [(epochs, mean, std, n), ...]} of validation top-1, by budget; a
  group joins the line line_of(arm, variant) names (None: no line)."""
  lines: dict[str, list] = {}
  for (arm, epochs, variant), g in sorted(groups.items(), key=lambda kv: kv[0][1]):
    st, label = g["metrics"].get(TOP1["val"]), line_of(arm, variant)
    if st and label:
      lines.setdefault(label, []).append((epochs, st["mean"], st["std"], st["n"]))
  return lines


def patience_figure(groups, path: Path) -> str | None:
  """Validation top-1 against the epoch budget, one line per arm (the plan's cells)."""
  from big_distill import plotting  # pylint: disable=g-import-not-at-top
  lines = _budget_lines(groups, lambda arm, variant: None if variant else arm)
  teacher = [g["metrics"]["val/t1_top1"]["mean"] for (a, _, v), g in groups.items()
             if a == "funmatch" and not v and "val/t1_top1" in g["metrics"]]
  if not any(len(p) > 1 for p in lines.values()):
    return None
  return plotting.plot_against_field(lines, str(path), field="epochs", metric=TOP1["val"],
                                     reference={"teacher": teacher[0]} if teacher else None)


def teacher_strength_figure(groups, path: Path) -> str | None:
  """Claim 10: the function-matching student's validation top-1 against the
  epoch budget, one line per teacher (the 30-epoch one and WEAKER)."""
  from big_distill import plotting  # pylint: disable=g-import-not-at-top
  lines = _budget_lines(groups, lambda arm, variant: (
      f"{variant.split('=')[1] if variant else 30}-epoch teacher"
      if arm == "funmatch" and variant in ("", *WEAKER) else None))
  if len(lines) < 2 or not any(len(p) > 1 for p in lines.values()):
    return None
  return plotting.plot_against_field(lines, str(path), field="epochs", metric=TOP1["val"])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--root", default=str(Path.home() / "bd_runs" / "fmnist"),
                 help="where every step's cells go")
  p.add_argument("--teacher", default=None,
                 help="the finished teacher workdir (default: ROOT/teacher_e30, made by "
                      "python -m big_distill.train --config=configs/fmnist_teacher.py:epochs=30 "
                      "--workdir=ROOT/teacher_e30)")
  p.add_argument("--steps", default="", help="only these steps, comma-separated")
  p.add_argument("--python", default=sys.executable)
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--run", action="store_true", help="run the plan's steps in order")
  mode.add_argument("--collect", action="store_true", help="tables and figures only")
  mode.add_argument("--missing", action="store_true",
                    help="list each step's cells that are neither finished under --root nor "
                         "recorded under --selection_from, with their progress; nothing runs")
  p.add_argument("--allow_config_change", action="store_true",
                 help="resume interrupted cells whose config.json an older checkout wrote "
                      "(passes --config.allow_config_change=True to every cell)")
  p.add_argument("--wait", action="store_true",
                 help="with --run: wait for the teacher, and for selection cells that another "
                      "runner is finishing, instead of stopping")
  p.add_argument("--selection_from", default=None, metavar="RESULTS_DIR",
                 help="read the lr selections sel_supervised and sel_distill from their "
                      "collected summary.json under this folder (e.g. docs/results) when their "
                      "cells are not under --root (a machine without the earlier cells); with "
                      "--collect, the tables and claims count the finished cells recorded there "
                      "too")
  p.add_argument("--results_dir", default=str(REPO / "docs" / "results"))
  p.add_argument("--update_doc", default=None, metavar="FILE.md",
                 help="with --collect: rewrite the table_val, table_test, img1020_val, "
                      "img1020_test, t2_val, t2_test and claims blocks "
                      "(<!-- NAME: begin --> ... <!-- NAME: end -->) of this file")
  p.add_argument("--figures_dir", default=str(REPO / "docs" / "figures"))
  a = p.parse_args(argv)
  root = Path(os.path.expanduser(a.root)).absolute()
  teacher = a.teacher or str(root / "teacher_e30")
  only = [s for s in a.steps.split(",") if s]
  known = {s["name"] for s in plan({arm: {"lr": "1"} for arm in
                                    ("supervised", *ARMS, "shampoo_paper", "sup_all",
                                     "vit_teacher", "vit_to_bit", "bit_to_vit")})}
  if set(only) - known:
    p.error(f"--steps: unknown {sorted(set(only) - known)}; the steps are {sorted(known)}")
  try:
    recorded = Path(a.selection_from) if a.selection_from else None
    selected = selection(root, recorded=recorded) if root.exists() else None
    if a.missing:
      print(missing_text(missing(root, selected, recorded, only)), end="")
      return 0
    if a.collect:
      collect_all(root, Path(a.results_dir), Path(a.figures_dir), selected)
      claim7 = (teacher_quality_figure(root, Path(a.figures_dir), selected, recorded)
                if selected else None)
      if claim7:
        print(f"# claim 7: {claim7[0]}: (teacher val loss, student val loss mean, std, n) = "
              f"{claim7[1]}")
      if selected:
        # The cells of an earlier machine count through their records (--selection_from).
        groups = table_groups(root, selected, recorded=recorded)
        g100, gall = (table_groups(root, selected, IMG100_T2, recorded),
                      table_groups(root, selected, IMG_ALL_T2, recorded,
                                   key_of=lambda arm: "sup_all" if arm == "supervised" else arm))
        rows = answer_claims(groups) + answer_claims_8_11(g100, gall, selected)
        Path(a.results_dir, "claims.json").write_text(json.dumps(rows, indent=1) + "\n")
        Path(a.results_dir, "claims.md").write_text(claims_markdown(rows))
        tables = {split: table_markdown(groups, split) for split in ("val", "test")}
        tables_t2 = {split: table_markdown(g100, split, arms=("supervised", "funmatch",
                                                              "shampoo_paper"))
                     for split in ("val", "test")}
        # The 1,020-image setting runs seed 0 only (the plan's img1020 step).
        groups1020 = table_groups(root, selected, ("img1020", IMG1020_T2), recorded)
        tables1020 = {split: table_markdown(groups1020, split, seeds=1) if groups1020 else ""
                      for split in ("val", "test")}
        Path(a.results_dir, "table.md").write_text(
            "".join(f"{split} top-1 (%), mean ± std over seeds 0-2, each arm at its lr chosen "
                    f"on validation:\n\n{tables[split]}\n" for split in ("val", "test")))
        if a.update_doc:
          found = update_blocks(Path(a.update_doc), {
              "table_val": tables["val"], "table_test": tables["test"],
              "img1020_val": tables1020["val"], "img1020_test": tables1020["test"],
              "t2_val": tables_t2["val"], "t2_test": tables_t2["test"],
              "claims": claims_markdown(rows)})
          print(f"# updated the blocks {found} of {a.update_doc}")
        fig = patience_figure(groups, Path(a.figures_dir) / "patience_val_student_top1_vs_epochs.png")
        fig1020 = patience_figure(groups1020, Path(a.figures_dir) / "img1020_patience_val_student_top1_vs_epochs.png")
        if fig1020:
          print(f"# 1,020-image patience figure: {fig1020}")
        # Claims 8-11's cells (the session-8 teacher): each arm's patience, and claim 10.
        for f in (patience_figure(g100, Path(a.figures_dir) / "t2_patience_val_student_top1_vs_epochs.png"),
                  teacher_strength_figure(g100, Path(a.figures_dir) / "claim10_teacher_strength.png")):
          if f:
            print(f"# claims 8-11 figure: {f}")
        print(claims_markdown(rows) + (f"# patience figure: {fig}" if fig else ""))
      return 0
    if not a.run:
      for step in plan(selected):
        if not only or step["name"] in only:
          print(f"# {step['name']}\n" + shlex.join(
              ["python", "-m", "big_distill.sweep", *sweep_args(step, root, teacher), "--run"]))
      if selected is None:
        print("# the later steps (e100 ...) are made once the sel_* steps have finished: "
              "their lr comes from that selection.")
      return 0
    failed, ran = [], set()
    steps, expanded = plan(None), False
    while True:
      pending = [s for s in steps if s["name"] not in ran]
      if not pending:
        if expanded:
          break
        # Selection done: the later steps (those run already are not run again).
        while a.wait and selection_running_elsewhere(root):
          time.sleep(60)  # Another runner is finishing a selection cell.
        selected = selection(root, recorded=recorded)
        if selected is None:
          print("# the lr selection is incomplete (failed cells?); rerun to resume it.")
          return 1
        steps, expanded = plan(selected), True
        continue
      step = pending[0]
      ran.add(step["name"])
      if only and step["name"] not in only:
        continue
      t1 = teacher_of(step, root, teacher)
      while t1 and not sweep.finished(t1):
        if not a.wait:
          print(f"# {step['name']}: the teacher {t1} has not finished (no student.npz); "
                "rerun when it has, or pass --wait.")
          return 1
        time.sleep(60)
      extra = ["--config.allow_config_change=True"] if a.allow_config_change else []
      if run_step(step, root, teacher, a.python, extra) != 0:
        failed.append(step["name"])
    if failed:
      print("# steps with failed cells (rerun to resume them): " + ", ".join(failed))
      return 1
    return 0
  except UserError as e:
    print(f"replicate_paper: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
