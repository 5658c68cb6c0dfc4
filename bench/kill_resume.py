"""Kill a real search at seeded random moments over its whole life, resume it each time, check the invariants.

    python bench/kill_resume.py [--kills 12] [--seed 0] [--small] [--out bench/results/kill_resume]

One search is started, then SIGKILLed (its whole process group, as a terminal's kill or an OOM killer would)
at a moment drawn from its life: Ray starting, the first trial, a rung decision (an ASHA stop), a trial
completion, the seed stage, the report. Each time ``--resume`` is started again, and the next kill comes
during that resume (so some kills land while the resume itself reconciles and restarts). After the last kill
the resume runs to the end, and the invariants are checked:

* every ``--resume`` completes (the last one exits 0, none fails on its own);
* a trial the study had recorded as finished at a kill is kept and never trained again (it reports nothing
  more: its line count in ``results/<trial>.jsonl`` stays the same);
* MLflow: one run per trial, none RUNNING, the parent FINISHED;
* the Optuna study has exactly as many trials as Tune, none RUNNING;
* one report (``report.md``, ``summary.json`` with a headline).

Writes ``<out>.md`` and ``<out>.json`` (every kill with its moment, delay and what the resume repaired).
``tests/test_resume_kills.py`` runs the same harness on a small search.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOMENTS = ("ray_start", "first_trial", "rung", "completion", "seed_stage", "report")
MARKERS = {  # the output line after which a moment has come (None: the process start)
    "ray_start": None,
    "first_trial": re.compile(r"\] start "),
    "rung": re.compile(r"\] stop "),
    "completion": re.compile(r"\] (?:done|stop) "),  # a trial's end, at full budget or stopped by ASHA
    "seed_stage": re.compile(r"^seed stage: \d+ runs"),
    "report": re.compile(r"^seed stage: (?P<n>\d+)/(?P=n) done"),
}
DELAY_S = {"ray_start": (0.5, 6.0), "report": (0.0, 1.5)}  # others: (0, 4) s after their line


@dataclass
class Kill:
    """One kill of the chain and what the next resume said."""

    moment: str
    delay_s: float
    at_s: float = float("nan")  # seconds after the process start
    happened: bool = False  # False: the process ended before the moment came
    finished_trials: int = 0  # trials the study had recorded as finished at the kill
    repairs: list[str] = field(default_factory=list)  # the "resume: ..." lines of the next process


def plan(kills: int, seed: int) -> list[Kill]:
    """``kills`` moments in the order of a search's life, each with a seeded random delay."""
    rng = random.Random(seed)
    phases = list(MOMENTS)
    # every moment at least once (when there are enough kills), the rest drawn, then in life order
    chosen = phases[:kills] + [rng.choice(phases[:4]) for _ in range(max(0, kills - len(phases)))]
    chosen.sort(key=phases.index)
    out = []
    for moment in chosen:
        low, high = DELAY_S.get(moment, (0.0, 4.0))
        out.append(Kill(moment, round(rng.uniform(low, high), 2)))
    return out


def _at_or_after(moment: str) -> re.Pattern | None:
    """The line of the moment or of any later one.

    A resume that skips a moment (its trials all restored as finished, say) is then killed at the next one
    instead of running to the end unkilled.
    """
    later = [MARKERS[m] for m in MOMENTS[MOMENTS.index(moment):]]
    if later[0] is None:
        return None
    return re.compile("|".join(f"(?:{p.pattern})" for p in later), re.MULTILINE)


def _watch(proc: subprocess.Popen, lines: list[str], seen: threading.Event, marker: re.Pattern | None) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if marker is not None and marker.search(line):
            seen.set()


def run_until(cmd: list[str], env: dict[str, str], cwd: Path, kill: Kill, timeout: float) -> tuple[int | None, str]:
    """Starts ``cmd``; SIGKILLs its process group ``kill.delay_s`` after ``kill.moment``; returns (rc, output)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    lines: list[str] = []
    seen = threading.Event()
    marker = _at_or_after(kill.moment)
    reader = threading.Thread(target=_watch, args=(proc, lines, seen, marker), daemon=True)
    reader.start()
    if marker is None:
        seen.set()
    while not seen.wait(0.05):
        if proc.poll() is not None or time.time() - t0 > timeout:
            break
    if seen.is_set() and proc.poll() is None:
        time.sleep(kill.delay_s)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kill.happened, kill.at_s = True, round(time.time() - t0, 1)
    if not kill.happened and proc.poll() is None and time.time() - t0 > timeout:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join(10)
    return (None if kill.happened else proc.returncode), "".join(lines)


def finished_trials(run_dir: Path) -> dict[str, int]:
    """Tune trial id -> lines in its result.json, for every trial the study records as finished."""
    db = run_dir / "optuna.db"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as con:
        rows = con.execute("select a.value_json from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
                           "where a.key = 'tune_trial_id' and t.state in ('COMPLETE', 'PRUNED')").fetchall()
    return {trial_id: _reports(run_dir, trial_id) for trial_id in (json.loads(v) for (v,) in rows)}


def _reports(run_dir: Path, trial_id: str) -> int:
    """How many results a trial has reported (its line count in the run's result log)."""
    path = run_dir / "results" / f"{trial_id}.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else -1


def invariants(runs: Path, name: str, num_samples: int, kept: dict[str, int]) -> dict[str, object]:
    """The checks after the last resume; every value is True when it holds (or a count to report)."""
    from mlflow.tracking import MlflowClient

    run_dir = runs / name
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = json.loads((run_dir / "trials.json").read_text())
    trials = rows if isinstance(rows, list) else rows.get("trials", [])
    tune_ids = [str(r["trial_id"]) for r in trials]
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    info = json.loads((run_dir / "run.json").read_text())
    parent = client.get_run(info["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                  "and tags.`sde.kind` = 'trial'", max_results=1000)
    names = [c.data.tags.get("trial_name") for c in children]
    with sqlite3.connect(run_dir / "optuna.db") as con:
        states = [s for (s,) in con.execute("select state from trials")]
        adopted = con.execute("select count(*) from study_user_attributes where key like 'tune_trial_id:%'"
                              ).fetchone()[0]
    retrained = []
    for trial_id, lines in kept.items():
        if _reports(run_dir, trial_id) != lines:
            retrained.append(trial_id)
    return {
        "one report": (run_dir / "report.md").is_file() and bool(summary.get("headline")),
        "parent FINISHED": parent.info.status == "FINISHED",
        "Tune trials == budget": len(tune_ids) == len(set(tune_ids)) == num_samples,
        "Optuna trials == Tune trials": len(states) == len(tune_ids),
        "no Optuna trial RUNNING": all(s not in ("RUNNING", "WAITING") for s in states),
        "one MLflow run per trial": sorted(names) == sorted(f"trainable_{t}" for t in tune_ids),
        "no MLflow run RUNNING": all(c.info.status != "RUNNING" for c in children),
        "finished trials not retrained": not retrained,
        "kept finished trials": len(kept),
        "retrained": retrained,
        "trained again (finished unseen by Tune)": adopted,
    }


def chain(cmd: list[str], name: str, runs: Path, env: dict[str, str], cwd: Path, kills: list[Kill],
          num_samples: int, timeout: float = 900) -> tuple[list[Kill], dict[str, object], str]:
    """Runs the kill chain and the final resume; returns (kills, invariants, the last output)."""
    resume = [*cmd, "--resume", name]
    first = [*cmd, "--name", name]
    kept: dict[str, int] = {}
    started = False
    outputs = []
    for i, kill in enumerate(kills):
        rc, out = run_until(resume if started else first, env, cwd, kill, timeout)
        started = started or (runs / name / "run.json").exists()
        outputs.append(out)
        if i:
            kills[i - 1].repairs = [ln.strip() for ln in out.splitlines() if ln.startswith("resume: ")]
        if not kill.happened:
            if rc != 0:
                raise RuntimeError(f"the process ended with {rc} before {kill.moment}:\n{out[-4000:]}")
            break
        now = finished_trials(runs / name)
        kill.finished_trials = len(now)
        for trial_id, lines in now.items():
            kept.setdefault(trial_id, lines)
    final = subprocess.run(resume if started else first, cwd=cwd, env=env, text=True, capture_output=True,
                           timeout=timeout)
    happened = [k for k in kills if k.happened]
    if happened:
        happened[-1].repairs = [ln.strip() for ln in final.stdout.splitlines() if ln.startswith("resume: ")]
    if final.returncode != 0:
        raise RuntimeError(f"the last resume failed ({final.returncode}):\n{final.stdout[-4000:]}\n"
                           f"{final.stderr[-4000:]}")
    return kills, invariants(runs, name, num_samples, kept), final.stdout


def main() -> int:
    """Runs the chain on the demo search (or ``--small``) and writes the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="the test suite's 6-trial search instead of the demo")
    ap.add_argument("--out", default=str(ROOT / "bench/results/kill_resume"))
    ap.add_argument("--workdir", default="/tmp/sde-kill-resume")
    ap.add_argument("--snapshot-s", help="seconds between Tune's state snapshots (TUNE_GLOBAL_CHECKPOINT_S); a "
                    "large value makes Tune's saved view lag the study, as Tune's own default of 10 s or more does")
    args = ap.parse_args()
    work = Path(args.workdir)
    runs = work / "runs"
    if runs.exists():
        import shutil

        shutil.rmtree(runs)
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import SMALL, search_env

    task = str(ROOT / "examples/demo_masa.yaml")
    cmd = [sys.executable, "-m", "sde_search.cli", "--task", task, "--runs-dir", str(runs),
           *(SMALL if args.small else [])]
    num_samples = 6 if args.small else 12
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    env = search_env(work)
    if args.snapshot_s:
        env["TUNE_GLOBAL_CHECKPOINT_S"] = args.snapshot_s
    kills, checks, _ = chain(cmd, "killed", runs, env, work, plan(args.kills, args.seed), num_samples, timeout=1800)
    wall = time.time() - t0
    lines = [f"# Kill at random moments, resume, check ({'small search' if args.small else 'demo search'})", "",
             f"`python bench/kill_resume.py --kills {args.kills} --seed {args.seed}{' --small' if args.small else ''}`"
             f"{f' --snapshot-s {args.snapshot_s}' if args.snapshot_s else ''}"
             f": {sum(k.happened for k in kills)} SIGKILLs of the process group, whole chain {wall / 60:.1f} min.",
             "", "| # | moment | delay after its line (s) | killed at (s after start) | finished trials kept | "
             "what the next resume repaired |", "|---|---|---|---|---|---|"]
    for i, k in enumerate(kills, 1):
        at = f"{k.at_s:.1f}" if k.happened else "(ended first)"
        lines.append(f"| {i} | {k.moment} | {k.delay_s} | {at} | {k.finished_trials} | "
                     f"{'<br>'.join(k.repairs) or '-'} |")
    lines += ["", "| invariant | holds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in checks.items()]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    Path(args.out + ".json").write_text(json.dumps({"kills": [asdict(k) for k in kills], "invariants": checks,
                                                    "wall_s": wall}, indent=1))
    print("\n".join(lines))
    bad = [k for k, v in checks.items() if v is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
