"""scripts/replicate_paper.py (the plan of sweeps) and big_distill.demo.

Fast: the plan's selection and collection read hand-written cells; sweeps are
faked. One tiny real run of the demo's three commands (a few steps each).
"""

import importlib.util
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from big_distill import demo
from big_distill import plotting
from big_distill import sweep
from tests import helpers
from tests.helpers import sweep_cell as _cell

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rp():
  spec = importlib.util.spec_from_file_location("replicate_paper", REPO / "scripts" / "replicate_paper.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _sweep_cells(line):
  """The cells of a printed `python -m big_distill.sweep ...` line."""
  args = shlex.split(line)[3:]
  config = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
  grids = [a.split("=", 1)[1] for a in args if a.startswith("--sweep=")]
  return sweep.expand(config, grids), args


def test_plan_prints_the_selection_first(rp, tmp_path, capsys):
  assert rp.main([f"--root={tmp_path}"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "# sel_supervised" and lines[2] == "# sel_distill"
  assert "once the sel_* steps have finished" in lines[-1]
  sup, args = _sweep_cells(lines[1])
  assert len(sup) == 8 and f"--root={tmp_path}/img100" in args
  assert not any(a.startswith("--config.t1_init") for a in args)  # No teacher for labels.
  assert sup[0].name == "arm=supervised,epochs=300,images=100,lr=0.001,mixup=0,seed=0"
  dist, args = _sweep_cells(lines[3])
  assert len(dist) == 5 * len(rp.ARMS) and f"--config.t1_init={tmp_path}/teacher_e30" in args
  assert {c.args["arm"] for c in dist} == set(rp.ARMS)
  assert {c.args["lr"] for c in sup} == {"0.001", "0.003", "0.01", "0.03"}
  assert {c.args["lr"] for c in dist} == {"0.001", "0.003", "0.01", "0.03", "0.1"}
  # Every cell's config builds (checked as the sweep does before running).
  sweep.check_cells(sup + dist, [f"--config.t1_init={tmp_path}"])


def _selection_cells(rp, root, done=True):
  """All selection cells: lr 0.01 best on validation, lr 0.001 best on test."""
  for step in rp.plan(None):
    if step["name"] not in rp.REQUIRED:
      continue  # Claims 8-11's selections: their own test.
    for c in sweep.expand(step["config"], step["grids"]):
      lr = c.args["lr"]
      val = {"0.001": 0.5, "0.003": 0.6, "0.01": 0.7, "0.03": 0.4, "0.1": 0.3}[lr]
      if c.args.get("mixup") == "1":
        val += 0.05
      test = 0.99 if lr == "0.001" else val
      _cell(root / "img100", c.args, [{"step": 10, "val/student_top1": val,
                                       "test/student_top1": test, "progress/epoch": 300.0}],
            done=done or lr != "0.03")


def test_selection_on_validation_feeds_the_later_steps(rp, tmp_path, capsys):
  _selection_cells(rp, tmp_path, done=False)
  assert rp.selection(tmp_path) is None  # An unfinished selection cell: no choice yet.
  _selection_cells(rp, tmp_path / "b")
  chosen = rp.selection(tmp_path / "b")
  assert chosen == {"supervised": {"lr": "0.01", "mixup": "1"},
                    **{arm: {"lr": "0.01"} for arm in rp.ARMS}}
  steps = {s["name"]: s for s in rp.plan(chosen)}
  assert list(steps)[:5] == ["sel_supervised", "sel_distill", "e100", "e300", "e1000"]
  e100 = sweep.expand(steps["e100"]["config"], steps["e100"]["grids"])
  assert len(e100) == 3 * (1 + len(rp.ARMS)) and {c.args["lr"] for c in e100} == {"0.01"}
  assert {c.args["seed"] for c in e100} == {"0", "1", "2"}
  assert [c.args.get("mixup") for c in e100 if c.args["arm"] == "supervised"] == ["1"] * 3
  # The table's seed-0 300-epoch cells are the selection's: they run once.
  e300 = {c.name for c in sweep.expand(steps["e300"]["config"], steps["e300"]["grids"])}
  sel = {c.name for s in rp.plan(None) for c in sweep.expand(s["config"], s["grids"])}
  assert len(e300 & sel) == 1 + len(rp.ARMS)
  third = sweep.expand(steps["lr_third"]["config"], steps["lr_third"]["grids"])
  assert [(c.args["arm"], c.args["lr"]) for c in third] == [("funmatch", "0.00333333"),
                                                            ("fixed", "0.00333333")]
  quality = sweep.expand(steps["teacher_quality"]["config"], [
      g.replace("TEACHERS/", "/r/teachers/") for g in steps["teacher_quality"]["grids"]])
  assert {c.overrides["config.t1_init"] for c in quality} == {"/r/teachers/epochs=1",
                                                              "/r/teachers/epochs=5"}
  assert rp.main([f"--root={tmp_path / 'b'}", "--steps=e100"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == ("# sel_supervised: arm=supervised: lr=0.01, mixup=1 "
                    "(val/student_top1 0.7500, among 8)")
  i = out.index("# e100")
  assert "lr=0.01" in out[i + 1] and "0.03" not in out[i + 1] and len(out) == i + 2


def test_run_stops_at_a_missing_teacher(rp, tmp_path, monkeypatch, capsys):
  ran = []
  monkeypatch.setattr(rp, "run_step", lambda step, *a: ran.append(step["name"]) or 0)
  assert rp.main([f"--root={tmp_path}", "--run"]) == 1
  assert ran == ["sel_supervised"]
  assert "sel_distill: the teacher" in capsys.readouterr().out


def test_run_waits_for_a_selection_cell_another_runner_holds(rp, tmp_path, monkeypatch):
  """Two runners share the plan: the one that finds the last selection cell held waits for it."""
  import fcntl  # pylint: disable=g-import-not-at-top
  _selection_cells(rp, tmp_path, done=False)  # The lr 0.03 cells are unfinished...
  (tmp_path / "teacher_e30").mkdir()
  (tmp_path / "teacher_e30" / "student.npz").write_bytes(b"x")
  ran = []
  monkeypatch.setattr(rp, "run_step", lambda step, *a: ran.append(step["name"]) or 0)
  held = [wd for wd in (tmp_path / "img100").iterdir() if not sweep.finished(str(wd))]
  locks = [open(wd / sweep.LOCK_FILE, "w") for wd in held]  # ...and held by another runner,
  for lock in locks:
    fcntl.flock(lock, fcntl.LOCK_EX)
  assert len(rp.selection_running_elsewhere(tmp_path)) == len(held) == 2 + len(rp.ARMS)

  def other_runner_finishes(_):  # which finishes them while this one waits.
    for wd, lock in zip(held, locks):
      (wd / "student.npz").write_bytes(b"x")
      lock.close()
  monkeypatch.setattr(rp.time, "sleep", other_runner_finishes)
  assert rp.main([f"--root={tmp_path}", "--run", "--wait"]) == 0
  assert ran[:8] == ["sel_supervised", "sel_distill", "sel_shampoo_paper", "sel_sup_all",
                     "sel_vit_teacher", "sel_bit_to_vit", "e100", "e300"]
  assert "img1020" in ran and "c9_e30000" in ran
  assert len(ran) == len(set(ran))  # Each step once, also across the selection.
  assert not rp.selection_running_elsewhere(tmp_path)


def test_collect_writes_tables_and_figures(rp, tmp_path, capsys):
  _selection_cells(rp, tmp_path / "root")
  res, fig = tmp_path / "results", tmp_path / "figures"
  assert rp.main([f"--root={tmp_path / 'root'}", "--collect", f"--results_dir={res}",
                  f"--figures_dir={fig}"]) == 0
  summary = json.loads((res / "sel_distill" / "summary.json").read_text())
  assert {ch["within"]["arm"]: ch["chosen"]["lr"] for ch in summary["selected"]} == {
      arm: "0.01" for arm in rp.ARMS}
  assert summary["cells"][0]["workdir"].startswith("img100/")  # No machine's path in git.
  assert (res / "sel_supervised" / "groups.md").read_text().startswith("| mixup | lr | n | val/student_top1 | test/student_top1 |")
  # The table's 300-epoch step shares the selection's seed-0 cells: 9 of 27 done.
  assert sorted(p.name for p in fig.iterdir()) == [
      "e300_val_student_top1.png", "sel_distill_val_student_top1_vs_lr.png",
      "sel_supervised_val_student_top1_vs_lr.png"]
  out = capsys.readouterr().out
  assert "e100: nothing to collect yet" in out and "# e300: 9/27 cells finished" in out
  # A step whose cells have started but logged nothing yet leaves no half-written tables.
  e100 = next(s for s in rp.plan({**{a: {"lr": "0.01"} for a in rp.ARMS},
                                  "supervised": {"lr": "0.01", "mixup": "1"}})
              if s["name"] == "e100")
  c = sweep.expand(e100["config"], e100["grids"])[0]
  _cell(tmp_path / "root" / e100["root"], c.args, [], done=False)
  assert rp.main([f"--root={tmp_path / 'root'}", "--collect", f"--results_dir={res}",
                  f"--figures_dir={fig}"]) == 0
  assert "e100: nothing to collect yet" in capsys.readouterr().out
  assert not (res / "e100").exists()


def test_update_blocks_rewrites_only_the_marked_blocks(rp, tmp_path):
  doc = tmp_path / "r.md"
  doc.write_text("# T\n<!-- claims: begin -->\nold\nold\n<!-- claims: end -->\nkept\n")
  assert rp.update_blocks(doc, {"claims": "| new |\n", "table_val": "x"}) == ["claims"]
  assert doc.read_text() == "# T\n<!-- claims: begin -->\n| new |\n<!-- claims: end -->\nkept\n"


def test_recorded_commands_are_made_portable(rp):
  cmd = ("/work/main/.venv/bin/python -m big_distill.train --config=c.py:lr=0.1 "
         "--config.t1_init=/root/bd_runs/t --workdir=/root/bd_runs/img100/arm=fixed,lr=0.1")
  assert rp.portable(json.dumps({"command": cmd, "root": "/root/bd_runs"}), "/root") == json.dumps(
      {"command": "python -m big_distill.train --config=c.py:lr=0.1 --config.t1_init=$HOME/bd_runs/t"
                  " --workdir=$HOME/bd_runs/img100/arm=fixed,lr=0.1", "root": "$HOME/bd_runs"})
  assert rp.portable("/rooted/x,/usr/bin/python3 -m a", "/root") == "/rooted/x,python -m a"


# ---- The demo ------------------------------------------------------------------

def test_demo_table():
  results = {"teacher": dict(val=0.9, test=0.88, agree=None, rate=800.0, wall=100.0),
             "supervised": dict(val=0.6, test=0.58, agree=None, rate=900.0, wall=60.0),
             "funmatch": dict(val=0.8, test=0.79, agree=0.85, rate=700.0, wall=70.0)}
  lines = demo.table(results)
  assert lines[0].split() == ["val", "top-1", "test", "top-1", "images/s", "wall"]
  assert lines[3].split()[-5:] == ["60.00%", "58.00%", "900", "60", "s"]
  # (79 - 58) / (88 - 58) = 70% of the gap.
  assert lines[-1] == ("function matching: 85.00% test top-1 agreement with the teacher; "
                       "closes 70% of the supervised-to-teacher gap on test")


def test_demo_runs_its_three_commands(fashion_data_dir, tmp_path, capsys, monkeypatch):
  """The demo's code path for real, a few steps per run. Each printed command
  is the trainer's (`python -m big_distill.train ...`), run here by its in-process
  entry point with those very arguments: the process boundary is not what this
  tests, and three interpreter starts with TensorFlow were a third of its time."""
  from big_distill import train  # pylint: disable=g-import-not-at-top
  ran = []

  def in_process(cmd, check, cwd):
    assert cmd[:3] == [sys.executable, "-m", "big_distill.train"], cmd
    assert check and cwd == demo.REPO
    monkeypatch.chdir(cwd)
    helpers.run_main(train, ["big_distill.train", *cmd[3:]], monkeypatch)
    ran.append(cmd)
  monkeypatch.setattr(demo.subprocess, "run", in_process)
  results = demo.demo(tmp_path / "demo", data_dir=fashion_data_dir, runlocal=True,
                      python=sys.executable)
  assert len(ran) == 3
  out = capsys.readouterr().out
  cmds = [shlex.split(l[2:]) for l in out.splitlines() if l.startswith("$ ")]
  assert [c[3].split("=", 1)[1].split(":")[0] for c in cmds] == [
      "configs/fmnist_teacher.py", "configs/fmnist_distill.py", "configs/fmnist_distill.py"]
  assert f"--config.t1_init={tmp_path / 'demo' / 'teacher'}" in cmds[2]
  assert "arm=supervised" in cmds[1][3] and "arm=funmatch" in cmds[2][3]
  for name in ("teacher", "supervised", "funmatch"):
    assert 0 <= results[name]["test"] <= 1 and 0 <= results[name]["val"] <= 1
  assert 0 <= results["funmatch"]["agree"] <= 1
  assert "student, function matching (100 images)" in out and "total wall time" in out


def test_teacher_quality_figure(rp, tmp_path):
  """Claim 7's figure: one point per teacher, from the e1000 and teacher_quality cells."""
  root = tmp_path / "root"
  chosen = {arm: {"lr": "0.01"} for arm in ("supervised", *rp.ARMS)}
  steps = {s["name"]: s for s in rp.plan(chosen)}
  assert rp.teacher_quality_figure(root, tmp_path, chosen) is None  # Nothing finished yet.
  for name, losses in (("e1000", (0.3, 0.5)), ("teacher_quality", (0.6, 0.9))):
    grids = [g.replace("TEACHERS/", f"{root}/teachers/") for g in steps[name]["grids"]]
    for c in sweep.expand(steps[name]["config"], grids):
      if c.args["arm"] != "funmatch":
        continue
      teacher = {"epochs=1": 1.0, "epochs=5": 0.5}.get(
          c.overrides.get("config.t1_init", "").rsplit("/", 1)[-1], 0.25)
      wd = root / "img100" / c.name
      wd.mkdir(parents=True)
      (wd / sweep.CELL_FILE).write_text(json.dumps({"args": c.args, "overrides": c.overrides}))
      (wd / "student.npz").write_bytes(b"x")
      (wd / "metrics.jsonl").write_text(json.dumps(
          {"step": 5, "val/student_loss": losses[0] + teacher + 0.01 * int(c.args["seed"]),
           "val/t1_loss": teacher}) + "\n")
  path, points = rp.teacher_quality_figure(root, tmp_path, chosen)
  assert [(x, n) for x, _, _, n in points] == [(0.25, 3), (0.5, 3), (1.0, 3)]
  assert [round(m, 6) for _, m, _, _ in points] == [0.56, 1.11, 1.61]
  assert all(s == pytest.approx(0.01) for _, _, s, _ in points)
  assert path.endswith("claim7_teacher_quality.png") and Path(path).stat().st_size > 10_000


# ---- The claims ------------------------------------------------------------------

def _table_cell(root, arm, epochs, seed, lr="0.01", teacher=None, images=100, setting=None,
                mixup="1", **metrics):
  args = {"arm": arm, "epochs": str(epochs), "images": str(images), "lr": lr, "seed": str(seed)}
  if arm == "supervised" and mixup:
    args["mixup"] = mixup
  if metrics.pop("hard", False):
    args["loss"] = "hard"
  overrides = {"config.t1_init": teacher} if teacher else {}
  c = sweep.Cell("configs/fmnist_distill.py", args, overrides, sorted(args))
  wd = root / (setting or f"img{images}") / c.name
  wd.mkdir(parents=True)
  (wd / sweep.CELL_FILE).write_text(json.dumps({"args": args, "overrides": overrides}))
  (wd / "student.npz").write_bytes(b"x")
  row = {"step": 7, "test/t1_top1": 0.9, "val/t1_top1": 0.9, "val/t1_loss": 0.3}
  row.update({k.replace("__", "/"): v for k, v in metrics.items()})
  (wd / "metrics.jsonl").write_text(json.dumps(row) + "\n")


def _arm_cells(root, arm, epochs, top1, spread=0.002, **extra):
  for seed in range(3):
    v = top1 + spread * (seed - 1)  # Mean top1, std `spread`.
    _table_cell(root, arm, epochs, seed, val__student_top1=v, test__student_top1=v, **extra)


def test_claims_answered_from_the_table_with_interim_readings(rp, tmp_path, capsys):
  """Each claim at its own budget, else 'not run' with the interim reading of docs/results.md."""
  root = tmp_path / "root"
  chosen = {arm: {"lr": "0.01"} for arm in ("supervised", *rp.ARMS)}
  chosen["supervised"]["mixup"] = "1"
  assert all(r["answer"] == "not run" and not r["interim"]
             for r in rp.answer_claims(rp.table_groups(root, chosen)))
  table = {300: dict(funmatch=0.75, fixed=0.70, consistent=0.74, independent=0.70,
                     supervised=0.66, shampoo=0.81, lowres=0.73),
           1000: dict(funmatch=0.80, fixed=0.71, consistent=0.78, independent=0.775,
                      supervised=0.68, shampoo=0.82, lowres=0.79)}
  for epochs, arms in table.items():
    for arm, top1 in arms.items():
      _arm_cells(root, arm, epochs, top1, test_cal__student_ece=0.03, val__student_loss=0.5)
  _arm_cells(root, "funmatch", 1000, 0.5, hard=True, test_cal__student_ece=0.2)
  # Another lr (a selection cell) and a single seed at 10,000 epochs: neither counts.
  _table_cell(root, "funmatch", 1000, 0, lr="0.1", val__student_top1=0.1, test__student_top1=0.1)
  _table_cell(root, "funmatch", 10000, 0, val__student_top1=0.9, test__student_top1=0.9)
  rows = {r["claim"]: r for r in rp.answer_claims(rp.table_groups(root, chosen))}
  assert [r["answer"] for r in rows.values()] == ["not run"] * 5 + ["holds", "not run"]
  interim = {n: (r["interim"] or {}).get("answer") for n, r in rows.items()}
  # 1 at 1,000: FM beats fixed by 9 points, consistent independent by 0.5 > 2 std (0.4).
  assert rows[1]["interim"]["epochs"] == 1000 and interim[1] == "holds"
  assert "diff 9.00, 2 std 0.40" in rows[1]["interim"]["numbers"]
  # 2: 300 -> 1,000: FM +5 points, fixed +1. 3: (0.80-0.68)/(0.90-0.68) = 54.5%.
  assert interim[2] == "holds" and interim[3] == "does not hold"
  assert "closes 54.5% of the gap" in rows[3]["interim"]["numbers"]
  # 4: Adam's 0.80 at 1,000 is reached by Shampoo at 300 <= 500. 5: 1 point below.
  assert interim[4] == "holds" and "reaches it at 300 epochs" in rows[4]["interim"]["numbers"]
  assert interim[5] == "holds" and "= 1.00 points" in rows[5]["interim"]["numbers"]
  assert "hard / kl = 6.67" in rows[6]["numbers"] and rows[7]["interim"] is None
  # Claim 1 at its own budgets (10,000 and 3,000), where consistent no longer wins.
  for arm, top1 in dict(funmatch=0.85, fixed=0.72).items():
    for seed in range(3):
      if (arm, seed) != ("funmatch", 0):
        _table_cell(root, arm, 10000, seed, val__student_top1=top1, test__student_top1=top1)
  _arm_cells(root, "consistent", 3000, 0.78, spread=0.01)
  _arm_cells(root, "independent", 3000, 0.77, spread=0.01)
  rows = {r["claim"]: r for r in rp.answer_claims(rp.table_groups(root, chosen))}
  assert rows[1]["answer"] == "does not hold" and rows[1]["interim"] is None
  md = rp.claims_markdown(rows.values())
  assert md.count("\n") == 9 and "| 1. FM > fixed" in md and "interim (1000 epochs): holds" in md
  _table_cell(root, "shampoo", 3000, 0, val__student_top1=0.83, test__student_top1=0.83)
  groups = rp.table_groups(root, chosen)
  assert rp.patience_figure(groups, tmp_path / "p.png").endswith("p.png")
  table = rp.table_markdown(groups, "test").splitlines()
  assert table[0] == "| arm | 300 epochs | 1000 epochs | 3000 epochs | 10000 epochs |"
  assert table[2] == "| supervised | 66.00 ± 0.20 | 68.00 ± 0.20 |  |  |"
  assert table[3] == "| fixed | 70.00 ± 0.20 | 71.00 ± 0.20 |  | 72.00 ± 0.00 |"
  assert table[7] == "| shampoo | 81.00 ± 0.20 | 82.00 ± 0.20 | 83.00 ± 0.00 (n=1) |  |"


def test_claim_4_interim_is_at_the_longest_budget_both_optimizers_reached(rp, tmp_path):
  root = tmp_path / "root"
  chosen = {arm: {"lr": "0.01"} for arm in ("supervised", *rp.ARMS)}
  for arm, curve in (("funmatch", {300: 0.70, 1000: 0.76}), ("shampoo", {100: 0.71, 300: 0.72})):
    for epochs, top1 in curve.items():
      _arm_cells(root, arm, epochs, top1)
  row = rp.answer_claims(rp.table_groups(root, chosen))[3]
  assert row["claim"] == 4 and row["interim"]["epochs"] == 300  # Not 1,000: no Shampoo there.
  assert row["interim"]["answer"] == "holds"  # 71% at 100 <= 150 epochs reaches Adam's 70%.


def test_the_1020_image_setting_has_its_own_table(rp, tmp_path):
  """img1020's seed-0 cells: their own table (plain %, n only where not 1), apart from img100's."""
  root = tmp_path / "root"
  chosen = {arm: {"lr": "0.01"} for arm in ("supervised", *rp.ARMS)}
  chosen["supervised"]["mixup"] = "1"
  _arm_cells(root, "funmatch", 300, 0.70)
  for arm, epochs, top1 in (("funmatch", 300, 0.8), ("funmatch", 1000, 0.85),
                            ("supervised", 1000, 0.81)):
    _table_cell(root, arm, epochs, 0, images=1020, val__student_top1=top1,
                test__student_top1=top1 - 0.01)
  _table_cell(root, "fixed", 1000, 0, lr="0.1", images=1020, val__student_top1=0.1,
              test__student_top1=0.1)  # Not the chosen lr: not in the table.
  g100, g1020 = rp.table_groups(root, chosen), rp.table_groups(root, chosen, "img1020")
  assert set(g100) == {("funmatch", 300, "")}
  assert set(g1020) == {("funmatch", 300, ""), ("funmatch", 1000, ""), ("supervised", 1000, "")}
  assert rp.table_markdown(g1020, "test", seeds=1).splitlines() == [
      "| arm | 300 epochs | 1000 epochs |", "|---|---|---|",
      "| supervised |  | 80.00 |", "| funmatch | 79.00 | 84.00 |"]
  assert rp.table_markdown(g1020, "val", seeds=3).splitlines()[3] == \
      "| funmatch | 80.00 ± 0.00 (n=1) | 85.00 ± 0.00 (n=1) |"
  assert rp.table_markdown(g100, "val").splitlines()[2] == "| funmatch | 70.00 ± 0.20 |"


def _recorded_selections(rp, rec):
  """rec/sel_supervised and rec/sel_distill as an earlier session collected them."""
  for step, picks in (("sel_supervised", [{"within": {}, "chosen": {"lr": "0.01", "mixup": "1"}}]),
                      ("sel_distill", [{"within": {"arm": a}, "chosen": {"lr": "0.03"}}
                                       for a in rp.ARMS])):
    (rec / step).mkdir(parents=True)
    (rec / step / "summary.json").write_text(json.dumps(
        {"selected": [{**p, "value": 0.5, "candidates": 5} for p in picks]}))
  return rec


def test_claims_8_to_11_steps_wait_for_their_own_selections(rp, tmp_path):
  # A machine without the earlier cells: the required selections come from
  # their collected records, the new arms' only from their own cells.
  rec = _recorded_selections(rp, tmp_path / "results")
  root = tmp_path / "root"
  root.mkdir()
  assert rp.selection(root) is None  # No cells, no record: nothing is chosen.
  chosen = rp.selection(root, log=lambda *_: None, recorded=rec)
  assert chosen["supervised"] == {"lr": "0.01", "mixup": "1"} and chosen["funmatch"] == {"lr": "0.03"}
  assert "shampoo_paper" not in chosen and "sup_all" not in chosen
  # The new selections are made from their own cells once these have finished.
  for step in rp.continued(None):
    assert step["name"] in ("sel_shampoo_paper", "sel_sup_all")
    for c in sweep.expand(step["config"], step["grids"]):
      top1 = 0.7 if c.args["lr"] == "0.3" or c.args.get("epochs") == "30" and c.args["lr"] == "0.01" else 0.5
      _cell(root / step["root"], c.args, [{"step": 10, "val/student_top1": top1}])
  chosen = rp.selection(root, log=lambda *_: None, recorded=rec)
  assert chosen["shampoo_paper"] == {"lr": "0.3"}
  assert chosen["sup_all"] == {"epochs": "30", "lr": "0.01"}
  assert rp.selection(root, recorded=rec) == chosen
  # On the next machine these selections come from their records, once complete.
  rp.collect_all(root, rec, tmp_path / "figures", chosen)
  shutil.rmtree(root / rp.IMG100_T2)
  shutil.rmtree(root / rp.IMG_ALL_T2)
  again = rp.selection(root, log=lambda *_: None, recorded=rec)
  assert again == chosen, [(k, again.get(k), chosen.get(k)) for k in set(again) | set(chosen) if again.get(k) != chosen.get(k)]
  summary = rec / "sel_sup_all" / "summary.json"
  s = json.loads(summary.read_text())
  s["cells"][0]["finished"] = False  # A record of a selection that had not finished.
  summary.write_text(json.dumps(s))
  assert "sup_all" not in rp.selection(root, log=lambda *_: None, recorded=rec)
  del chosen["shampoo_paper"], chosen["sup_all"]
  names = [s["name"] for s in rp.plan(chosen)]
  assert "c8_shampoo_paper" not in names and "c11_sup_all" not in names  # They wait.
  for n in ("sel_shampoo_paper", "sel_sup_all", "c8_adam", "c9_e10000", "c9_e30000",
            "c10_e1000", "c10_e10000", "c11_fm_all"):
    assert n in names
  steps = {s["name"]: s for s in rp.plan({**chosen, "shampoo_paper": {"lr": "0.3"},
                                          "sup_all": {"epochs": "30", "lr": "0.01"}})}
  cells = lambda n: sweep.expand(steps[n]["config"], steps[n]["grids"])
  # Claim 8: the chosen lr at every budget, 3 seeds; Adam's reference on the same teacher.
  sp = cells("c8_shampoo_paper")
  assert {(c.args["epochs"], c.args["lr"]) for c in sp} == {
      (e, "0.3") for e in ("100", "300", "1000", "3000")} and len(sp) == 12
  assert steps["c8_adam"]["root"] == steps["c8_shampoo_paper"]["root"] == rp.IMG100_T2
  # Claim 11: all 50,000 images; FM for the steps of 10,000 epochs of 100 images.
  fm_all = cells("c11_fm_all")
  assert {c.args["images"] for c in fm_all} == {"50000"} and {c.args["epochs"] for c in fm_all} == {"20"}
  assert 50000 * 20 == 100 * 10000
  sup_all = cells("c11_sup_all")
  assert {(c.args["arm"], c.args["epochs"], c.args["lr"]) for c in sup_all} == {
      ("supervised", "30", "0.01")} and len(sup_all) == 3
  # Claim 10: the weaker teachers at both budgets, beside the 30-epoch teacher's own cells.
  inits = {c.overrides.get("config.t1_init") for c in cells("c10_e10000")}
  assert inits == {"TEACHERS/epochs=1", "TEACHERS/epochs=5"}
  assert {c.overrides.get("config.t1_init") for c in cells("c10_e1000")} == inits | {None}
  # No cell of the new teachers lands in a root of the old ones.
  assert all(s["root"] in (rp.IMG100_T2, rp.IMG_ALL_T2) for n, s in steps.items()
             if n.startswith(("c8", "c9", "c10", "c11", "sel_shampoo", "sel_sup_all")))


def test_vit_steps_chain_their_selections(rp, tmp_path, capsys):
  """Issue 25: the ViT teacher chosen on validation is the teacher of its students' steps;
  each step appears once the selection it needs has finished."""
  rec = _recorded_selections(rp, tmp_path / "results")
  root = tmp_path / "root"
  root.mkdir()
  names = lambda chosen: [s["name"] for s in rp.plan(chosen)]
  chosen = rp.selection(root, log=lambda *_: None, recorded=rec)
  assert not {"vit_teacher", "vit_to_bit", "bit_to_vit"} & set(chosen)
  assert {"sel_vit_teacher", "sel_bit_to_vit"} <= set(names(None)) <= set(names(chosen))
  assert not {"sel_vit_to_bit", "vit_to_bit_e1000", "bit_to_vit_e1000"} & set(names(chosen))
  steps = {s["name"]: s for s in rp.plan(chosen)}
  teachers = sweep.expand(steps["sel_vit_teacher"]["config"], steps["sel_vit_teacher"]["grids"])
  assert [c.name for c in teachers] == ["epochs=3,lr=0.001,model=vit", "epochs=3,lr=0.003,model=vit"]
  assert rp.vit_teacher_cell("0.003") == teachers[1].name
  for c in teachers:  # lr 0.003 is the better teacher on validation (and the worse on test).
    _cell(root / rp.VIT_TEACHER_ROOT, c.args, [{"step": 10, "val/student_top1": float(c.args["lr"]) * 100,
                                                "test/student_top1": 0.1}])
  for c in sweep.expand(steps["sel_bit_to_vit"]["config"], steps["sel_bit_to_vit"]["grids"]):
    assert c.args["student"] == "vit" and c.args["teacher"] == "bit" and c.args["epochs"] == "300"
    _cell(root / rp.VIT_ROOT, c.args, [{"step": 10, "val/student_top1": 0.7 if c.args["lr"] == "0.01" else 0.5}])
  chosen = rp.selection(root, log=lambda *_: None, recorded=rec)
  assert chosen["vit_teacher"] == {"lr": "0.003"} and chosen["bit_to_vit"] == {"lr": "0.01"}
  steps = {s["name"]: s for s in rp.plan(chosen)}
  assert "vit_to_bit_e1000" not in steps  # Its own selection has not run yet.
  to_bit = steps["sel_vit_to_bit"]
  teacher_dir = f"{root}/{rp.VIT_TEACHER_ROOT}/epochs=3,lr=0.003,model=vit"
  assert rp.teacher_of(to_bit, root, "/bit") == teacher_dir
  assert f"--config.t1_init={teacher_dir}" in rp.sweep_args(to_bit, root, "/bit")
  assert "--config.t1_init=/bit" in rp.sweep_args(steps["bit_to_vit_e1000"], root, "/bit")
  assert rp.teacher_of(steps["sel_vit_teacher"], root, "/bit") is None
  e1000 = sweep.expand(steps["bit_to_vit_e1000"]["config"], steps["bit_to_vit_e1000"]["grids"])
  assert {(c.args["epochs"], c.args["lr"], c.args["seed"]) for c in e1000} == {
      ("1000", "0.01", s) for s in "012"}
  for c in sweep.expand(to_bit["config"], to_bit["grids"]):
    assert c.args["student"] == "bit" and c.args["teacher"] == "vit"
    _cell(root / rp.VIT_ROOT, c.args, [{"step": 10, "val/student_top1": 0.7 if c.args["lr"] == "0.03" else 0.5}])
  chosen = rp.selection(root, log=lambda *_: None, recorded=rec)  # One call: the chain.
  assert chosen["vit_to_bit"] == {"lr": "0.03"}
  steps = {s["name"]: s for s in rp.plan(chosen)}
  assert rp.teacher_of(steps["vit_to_bit_e1000"], root, "/bit") == teacher_dir
  # Every cell's config builds; the two families share a root but never a cell.
  cells = [c for n in ("sel_bit_to_vit", "sel_vit_to_bit", "vit_to_bit_e1000", "bit_to_vit_e1000")
           for c in sweep.expand(steps[n]["config"], steps[n]["grids"])]
  assert len({c.name for c in cells}) == len(cells) == 12
  sweep.check_cells(cells, [f"--config.t1_init={tmp_path}"])
  sweep.check_cells(teachers, [])
  # The run waits for (or stops at) the ViT teacher as for the BiT one.
  assert rp.main([f"--root={root}", f"--selection_from={rec}", "--steps=sel_vit_to_bit"]) == 0
  assert f"--config.t1_init={teacher_dir}" in capsys.readouterr().out


# ---- Records of another machine's cells; claims 8-11 (issue 27) ------------------


def _record(rp, root, setting, results, step):
  """results/<step>/summary.json as collect_all writes it, from ROOT/setting's cells."""
  cells = sweep.read_cells(str(root / setting))
  for c in cells:
    c["workdir"] = os.path.relpath(c["workdir"], root)
  (results / step).mkdir(parents=True)
  (results / step / "summary.json").write_text(json.dumps({"cells": cells}))
  return [c["name"] for c in cells]


def test_recorded_cells_count_where_their_workdirs_are_gone(rp, tmp_path):
  """A new machine has the collected records, not the cells: the tables and
  claims read the records, a cell finished here wins, and collecting a step
  again keeps a record that would lose finished cells."""
  chosen = {arm: {"lr": "0.01"} for arm in ("supervised", *rp.ARMS)}
  chosen["supervised"]["mixup"] = "1"
  old, new, rec = tmp_path / "old", tmp_path / "new", tmp_path / "results"
  for arm, top1 in (("funmatch", 0.8), ("fixed", 0.7), ("supervised", 0.6)):
    _arm_cells(old, arm, 1000, top1)
  _table_cell(old, "funmatch", 300, 0, val__student_top1=0.5)
  names = _record(rp, old, "img100", rec, "e1000")
  before = rp.table_groups(old, chosen)
  assert rp.table_groups(new, chosen) == {}  # Nothing here, no record given.
  assert rp.table_groups(new, chosen, recorded=rec) == before
  assert rp.answer_claims(rp.table_groups(new, chosen, recorded=rec)) == rp.answer_claims(before)
  assert rp.table_groups(new, chosen, "img1020", recorded=rec) == {}  # Another setting's.
  # One seed rerun here (another value): it replaces its record.
  _table_cell(new, "funmatch", 1000, 0, val__student_top1=0.83, test__student_top1=0.83)
  merged = rp.table_groups(new, chosen, recorded=rec)[("funmatch", 1000, "")]
  assert merged["n"] == 3 and merged["metrics"]["val/student_top1"]["mean"] == pytest.approx(
      (0.83 + 0.8 + 0.802) / 3)
  # Collecting e1000 here would drop the record's other finished cells: kept.
  rerun = next(n for n in names if n.startswith("arm=funmatch,epochs=1000,") and "seed=0" in n)
  lost = rp._lost_cells(new / "img100", rec / "e1000" / "summary.json", names)
  assert lost == [n for n in names if n != rerun] and len(lost) == 9
  assert rp._lost_cells(old / "img100", rec / "e1000" / "summary.json", names) == []
  assert rp._lost_cells(new / "img100", rec / "nothing" / "summary.json", names) == []


def test_a_steps_record_keeps_another_machines_cells_beside_new_ones(rp, tmp_path, capsys):
  """Collecting a step on a new machine joins the finished cells of its record
  (whose workdirs are gone) to the cells finished here; a cell finished here
  wins over its record; collecting again changes nothing."""
  chosen = {arm: {"lr": "0.01"} for arm in ("supervised", *rp.ARMS)}
  chosen["supervised"]["mixup"] = "1"
  old, new, res, fig = (tmp_path / d for d in ("old", "new", "results", "figures"))
  for arm, top1 in (("funmatch", 0.8), ("fixed", 0.7)):
    _arm_cells(old, arm, 1000, top1)
  rp.collect_all(old, res, fig, chosen)
  # A step that selects nothing groups by the fields that vary in it: its one lr is no column.
  assert json.loads((res / "e1000" / "summary.json").read_text())["over"] == ["arm"]
  assert "lr" not in (res / "e1000" / "groups.csv").read_text().splitlines()[0].split(",")
  record = res / "e1000" / "summary.json"
  assert sum(c["finished"] for c in json.loads(record.read_text())["cells"]) == 6
  capsys.readouterr()

  _table_cell(new, "supervised", 1000, 0, val__student_top1=0.6, test__student_top1=0.6)
  _table_cell(new, "fixed", 1000, 2, val__student_top1=0.75, test__student_top1=0.75)
  drawn = (fig / "e1000_val_student_top1.png").read_bytes()
  rp.collect_all(new, res, fig, chosen)
  out = capsys.readouterr().out
  assert "# e1000: 5 finished cells from its record (another machine's)" in out
  assert "e1000_val_student_top1.png kept" in out
  assert (fig / "e1000_val_student_top1.png").read_bytes() == drawn  # The old machine's curves.
  after = json.loads(record.read_text())
  done = {c["name"]: c for c in after["cells"] if c["finished"]}
  assert len(done) == 7 and sum(bool(c.get("recorded")) for c in done.values()) == 5
  assert all(c["workdir"].startswith("img100/") for c in after["cells"])
  groups = {g["fields"]["arm"]: g for g in after["groups"]}
  assert groups["funmatch"]["n"] == 3 and groups["supervised"]["n"] == 1
  assert groups["funmatch"]["metrics"]["val/student_top1"]["mean"] == pytest.approx(0.8)
  # The fixed arm's seed 2: this machine's value (0.75), not the record's (0.702).
  assert groups["fixed"]["metrics"]["val/student_top1"]["mean"] == pytest.approx(
      (0.698 + 0.7 + 0.75) / 3)
  rows = (res / "e1000" / "cells.csv").read_text().splitlines()
  assert len(rows) == 1 + len(after["cells"]) and sum("fixed" in r for r in rows) == 3
  rp.collect_all(new, res, fig, chosen)
  assert json.loads(record.read_text()) == after
  # A step none of whose cells is on this machine keeps its record as it is.
  shutil.rmtree(new / "img100")
  rp.collect_all(new, res, fig, chosen)
  assert json.loads(record.read_text()) == after
  # Nor does one whose only cell here has started and logged nothing yet: no table
  # of the step is rewritten half-way.
  tables = {f.name: f.read_text() for f in (res / "e1000").iterdir()}
  _cell(new / "img100", {"arm": "supervised", "epochs": "1000", "images": "100", "lr": "0.01",
                         "mixup": "1", "seed": "1"}, [], done=False)
  rp.collect_all(new, res, fig, chosen)
  assert {f.name: f.read_text() for f in (res / "e1000").iterdir()} == tables
  assert not list(res.glob(".*"))  # Nothing collected aside is left.


def test_the_1020_image_settings_new_cells_are_exactly_its_missing_ones(rp):
  """img1020_t2 runs the 9 cells that docs/results/img1020 has not finished, no other."""
  record = json.loads((REPO / "docs" / "results" / "img1020" / "summary.json").read_text())
  done = {(c["fields"]["arm"], c["fields"]["epochs"]) for c in record["cells"] if c["finished"]}
  missing = {(a, e) for a, es in rp.IMG1020_MISSING.items() for e in es.split(",")}
  every = {(a, e) for a in ("supervised", *rp.ARMS) for e in ("100", "300", "1000")}
  assert not done & missing and done | missing == every and len(missing) == 9
  chosen = {arm: {"lr": "0.01"} for arm in ("supervised", *rp.ARMS)}
  step = next(s for s in rp.plan(chosen) if s["name"] == "img1020_t2")
  cells = sweep.expand(step["config"], step["grids"])
  assert {(c.args["arm"], c.args["epochs"]) for c in cells} == missing
  assert step["root"] == rp.IMG1020_T2 and step["teacher"]
  assert {c.args["seed"] for c in cells} == {"0"} and {c.args["images"] for c in cells} == {"1020"}


def test_claims_8_to_11_answered_from_the_new_teachers_cells(rp, tmp_path, monkeypatch):
  chosen = {"supervised": {"lr": "0.01", "mixup": "1"}, "funmatch": {"lr": "0.01"},
            "shampoo_paper": {"lr": "0.01"}, "sup_all": {"epochs": "30", "lr": "0.01"}}
  root = tmp_path / "root"
  t2 = dict(setting=rp.IMG100_T2)

  def answers():
    g100 = rp.table_groups(root, chosen, rp.IMG100_T2)
    gall = rp.table_groups(root, chosen, rp.IMG_ALL_T2,
                           key_of=lambda arm: "sup_all" if arm == "supervised" else arm)
    return {r["claim"]: r for r in rp.answer_claims_8_11(g100, gall, chosen)}

  assert all(r["answer"] == "not run" and not r["interim"] for r in answers().values())
  # Claim 8 is decided by a budget that reaches Adam with all below it run, or
  # by every budget up to 1,500: not by 100 and 300 alone, below Adam.
  g = lambda: rp.table_groups(tmp_path / "part", chosen, rp.IMG100_T2)
  _arm_cells(tmp_path / "part", "funmatch", 3000, 0.80, **t2)
  for epochs, top1 in ((100, 0.70), (300, 0.78)):
    _arm_cells(tmp_path / "part", "shampoo_paper", epochs, top1, **t2)
  assert rp._claim8(g()) is None
  _arm_cells(tmp_path / "part", "shampoo_paper", 3000, 0.81, **t2)  # 1,000 still missing.
  assert rp._claim8(g()) is None
  _arm_cells(tmp_path / "part", "shampoo_paper", 1000, 0.805, **t2)
  assert rp._claim8(g()) == (True, rp._claim8(g())[1])
  assert "shampoo_paper reaches it at 1000 epochs" in rp._claim8(g())[1]
  # The 1,000-epoch cells and Shampoo's first budgets: interim readings only.
  _arm_cells(root, "funmatch", 1000, 0.76, **t2)
  for teacher, top1 in (("TEACHERS/epochs=5", 0.77), ("TEACHERS/epochs=1", 0.75)):
    _arm_cells(root, "funmatch", 1000, top1, teacher=teacher, **t2)
  for epochs, top1 in ((100, 0.70), (300, 0.78), (1000, 0.79)):
    _arm_cells(root, "shampoo_paper", epochs, top1, **t2)
  rows = answers()
  assert all(r["answer"] == "not run" for r in rows.values())
  # 8: Adam's 0.76 at 1,000 reached by Shampoo at 300 <= 500. 10: the 5-epoch teacher's ahead.
  assert rows["8"]["interim"]["epochs"] == 1000 and rows["8"]["interim"]["answer"] == "holds"
  assert "reaches it at 300 epochs" in rows["8"]["interim"]["numbers"]
  assert rows["10"]["interim"] == {"epochs": 1000, "answer": "does not hold",
                                   "numbers": rows["10"]["interim"]["numbers"]}
  assert "5 epochs 77.00 ± 0.20 (diff -1.00" in rows["10"]["interim"]["numbers"]
  # Adam at 3,000 (0.80): Shampoo below it at every budget up to 1,500.
  _arm_cells(root, "funmatch", 3000, 0.80, **t2)
  rows = answers()
  assert rows["8"]["answer"] == "does not hold" and "does not reach it" in rows["8"]["numbers"]
  # 9 and 10 at their budgets; 11 on all 50,000 images.
  for epochs, fm, sup in ((10000, 0.82, 0.70), (30000, 0.83, 0.71)):
    _arm_cells(root, "funmatch", epochs, fm, **t2)
    _arm_cells(root, "supervised", epochs, sup, **t2)
  for teacher, top1 in (("TEACHERS/epochs=5", 0.80), ("TEACHERS/epochs=1", 0.79)):
    _arm_cells(root, "funmatch", 10000, top1, teacher=teacher, **t2)
  every = dict(setting=rp.IMG_ALL_T2, images=50000)
  _arm_cells(root, "supervised", 30, 0.885, mixup=None, **every)
  _arm_cells(root, "supervised", 10, 0.5, mixup=None, **every)  # Not the chosen epochs.
  _arm_cells(root, "funmatch", 20, 0.89, **every)
  rows = answers()
  assert [rows[n]["answer"] for n in ("9", "10", "11a", "11b")] == ["holds"] * 4
  # The figures: each arm against the budget; one line per teacher for claim 10.
  g100 = rp.table_groups(root, chosen, rp.IMG100_T2)
  assert rp.patience_figure(g100, tmp_path / "t2.png") == str(tmp_path / "t2.png")
  drawn = []
  monkeypatch.setattr(plotting, "plot_against_field", lambda lines, path, **_: drawn.append(lines) or path)
  assert rp.teacher_strength_figure(g100, tmp_path / "c10.png") == str(tmp_path / "c10.png")
  assert {k: [(e, round(m, 4), n) for e, m, _, n in v] for k, v in drawn[0].items()} == {
      "30-epoch teacher": [(1000, 0.76, 3), (3000, 0.8, 3), (10000, 0.82, 3), (30000, 0.83, 3)],
      "5-epoch teacher": [(1000, 0.77, 3), (10000, 0.8, 3)],
      "1-epoch teacher": [(1000, 0.75, 3), (10000, 0.79, 3)]}
  assert rp.teacher_strength_figure({}, tmp_path / "none.png") is None
  # (0.82 - 0.70) / (0.90 - 0.70) and (0.83 - 0.71) / (0.90 - 0.71); (0.89 - 0.70) / 0.20.
  assert "test at 10000: " in rows["9"]["numbers"] and "60.0% of the gap" in rows["9"]["numbers"]
  assert "63.2% of the gap" in rows["9"]["numbers"]
  assert "supervised on 50,000 images (30 epochs) 88.50 ± 0.20, teacher 90.00 (1.50 points" \
      in rows["11a"]["numbers"]
  assert "95.0% of the gap" in rows["11b"]["numbers"]
  # A claim that fails: FM at 30,000 within 2 std of 10,000.
  _table_cell(root, "funmatch", 30000, 3, val__student_top1=0.70, test__student_top1=0.70, **t2)
  assert answers()["9"]["answer"] == "does not hold"
  markdown = rp.claims_markdown(list(answers().values()))
  assert "| 11b. FM on all 50,000 images" in markdown and "| 8. the paper's Shampoo" in markdown


def test_missing_lists_the_cells_no_run_or_record_holds(rp, tmp_path, capsys):
  """`--missing`: a step's cells finished here or recorded count as done; the
  others are listed with their state (held by a runner now, last epoch, or
  not started); a step whose selection is not made waits for it."""
  import fcntl  # pylint: disable=g-import-not-at-top
  root, rec = tmp_path / "root", tmp_path / "results"
  chosen = rp.selection(root, recorded=_recorded_selections(rp, rec), log=lambda *_: None)
  step = next(s for s in rp.plan(chosen) if s["name"] == "c10_e10000")
  cells = sweep.expand(step["config"], step["grids"])
  assert len(cells) == 6
  wds = [root / step["root"] / c.name for c in cells]
  for wd in wds[:4]:
    wd.mkdir(parents=True)
  (wds[0] / "student.npz").write_bytes(b"x")  # Finished here.
  (rec / "c10_e10000").mkdir(parents=True)  # Finished on another machine: its record.
  (rec / "c10_e10000" / "summary.json").write_text(json.dumps({"cells": [
      {"name": cells[1].name, "finished": True, "workdir": f"{step['root']}/{cells[1].name}"},
      {"name": cells[5].name, "finished": False, "workdir": f"{step['root']}/{cells[5].name}"}]}))
  (wds[2] / "metrics.jsonl").write_text(
      json.dumps({"step": 5, "progress/epoch": 1234.5}) + "\n"
      + json.dumps({"step": 6, "val/student_top1": 0.5}) + '\n{"step": 7, "progr')
  with open(wds[3] / sweep.LOCK_FILE, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # Another runner holds it.
    rows = {r["step"]: r for r in rp.missing(root, chosen, rec)}
    assert rp.main([f"--root={root}", "--missing", f"--selection_from={rec}",
                    "--steps=c10_e10000,c11_sup_all"]) == 0
  row = rows["c10_e10000"]
  assert (row["cells"], row["done"]) == (6, 2)
  assert row["todo"] == [dict(name=cells[2].name, running=False, epoch=1234.5),
                         dict(name=cells[3].name, running=True, epoch=None),
                         dict(name=cells[4].name, running=False, epoch=None),
                         dict(name=cells[5].name, running=False, epoch=None)]
  assert rows["c11_sup_all"] == dict(step="c11_sup_all", cells=None, done=0, todo=[])
  assert rows["img1020"]["run_as"] == "img1020_t2" and rows["img1020"]["todo"] == []
  assert rows["c8_shampoo_paper"]["cells"] is None  # Its lr is not chosen yet.
  assert rows["c8_adam"]["done"] == 0 and len(rows["c8_adam"]["todo"]) == 3
  # Without the record, its cell is missing; the other records' settings do not count.
  assert rp.missing(root, chosen, None, only=("c10_e10000",))[0]["done"] == 1
  out = capsys.readouterr().out
  lines = [l for l in out.splitlines() if not l.startswith("# ")]  # The selections read.
  assert lines[0] == "c10_e10000: 2 of 6 finished"
  assert f"  {cells[2].name}  (at epoch 1234.5)" in out
  assert f"  {cells[3].name}  (running, not started)" in out
  assert "c11_sup_all: waits for its selection" in out and "c8_" not in out
