"""Orchestration overhead: the same designs trained by a bare loop, and by sde-search with 1 and 2 trials at once.

(a) a sequential Python loop calling ``trial.fit`` directly (no Ray, no MLflow, no Optuna);
(b) ``sde-search`` with ``max_concurrent 1``; (c) ``sde-search`` with ``max_concurrent 2``.
Same task, same budget, same designs (brute force over all 24 designs of ``quick.yaml``, ASHA off, so that every
design trains to the end in all three). Prints (b)/(a), (c)/(a) and the orchestration share of (c): the part
of its trial slots (2 x wall) not spent inside ``fit()`` (the trial's own ``fit_s``; Ray start, worker imports,
Tune's scheduling and MLflow writes all count as orchestration), and the looser share not spent inside Tune's
trials (``time_total_s``). Goals (issue 9): (c)/(a) <= 0.65 on 2 cores, orchestration share < 5 %.

Each call stores its figures under ``--label`` in ``bench/results/overhead.json`` and rewrites
``bench/results/overhead.md`` with every label, so that a run of an older checkout (``--root``, e.g. a
``git worktree`` of the commit before a fix, run with ``--ways c``) stands beside the current code.

Usage: python bench/overhead.py [--label NAME] [--root CHECKOUT] [--ways a b c] [--max-train 400 --epochs 6]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_md import RESULTS, machine, publish

HERE = Path(__file__).resolve().parents[1]
SPACE = ["space.sampler.name=brute_force", "space.budget.num_samples=24", "space.asha.enabled=false"]
STORE = RESULTS / "overhead.json"


def task_overrides(args: argparse.Namespace) -> list[str]:
    """The trial budget shared by all three ways."""
    return [f"data.max_train={args.max_train}", f"train.epochs={args.epochs}", "train.reports_per_epoch=1",
            "data.max_eval=40", "data.max_test=40"]


def bare_loop(args: argparse.Namespace, root: Path, cache: Path) -> dict[str, float]:
    """(a): every design of the space through ``fit`` in one process."""
    code = f"""
import json, itertools, time
from sde_search.config import load_task_and_space
from sde_search.design import Design
from sde_search import trial
t0 = time.perf_counter()
task, space, _ = load_task_and_space({str(root / "examples" / "demo_masa.yaml")!r}, None,
                                     {task_overrides(args) + SPACE!r})
inside = 0.0
choices = space.design_choices()
for values in itertools.product(*choices.values()):
    t1 = time.perf_counter()
    trial.fit(task, Design(**dict(zip(choices, values))), None, report=lambda m, p: None, threads=1)
    inside += time.perf_counter() - t1
print(json.dumps({{"wall": time.perf_counter() - t0, "fit": inside}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=root, check=True, capture_output=True, text=True,
                         env={**os.environ, "SDE_CACHE": str(cache)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def search(args: argparse.Namespace, root: Path, cache: Path, runs: Path, concurrent: int) -> dict[str, float]:
    """(b)/(c): the search; wall of the search without test scoring, seconds inside trials and inside fit."""
    name = f"c{concurrent}"
    sets = [x for o in [*task_overrides(args), *SPACE, f"space.budget.max_concurrent={concurrent}"]
            for x in ("--set", o)]
    subprocess.run([sys.executable, "-m", "sde_search.cli", "--task", str(root / "examples" / "demo_masa.yaml"),
                    "--runs-dir", str(runs), "--name", name, *sets], cwd=root, check=True, capture_output=True,
                   text=True, env={**os.environ, "SDE_CACHE": str(cache)})
    summary = json.loads((runs / name / "summary.json").read_text())
    rows = json.loads((runs / name / "trials.json").read_text())
    fit = [r["metrics"].get("fit_s") for r in rows]
    return {"wall": summary["wall_s"], "ray_init": summary["ray_init_s"],
            "trials": sum(r["metrics"].get("time_total_s", 0.0) for r in rows),
            "fit": sum(fit) if all(isinstance(f, (int, float)) for f in fit) else None}


def shares(c: dict[str, float]) -> tuple[float, float | None]:
    """Orchestration share of (c): slots not inside trials, and slots not inside fit()."""
    slots = 2 * c["wall"]
    return max(0.0, 1 - c["trials"] / slots), (None if c["fit"] is None else max(0.0, 1 - c["fit"] / slots))


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def label_lines(label: str, entry: dict) -> list[str]:
    """One label's table and goals."""
    ways = entry["ways"]
    a = ways.get("a")
    lines = [f"### {label}", "", f"{entry['note']}", "",
             "| way | wall s | seconds inside fit | seconds inside trials | ratio to (a) |", "|---|---|---|---|---|"]
    names = {"a": "(a) bare loop calling fit", "b": "(b) sde-search, 1 at once", "c": "(c) sde-search, 2 at once"}
    for key, r in ways.items():
        ratio = f"{r['wall'] / a['wall']:.2f}" if a else "-"
        fit = "-" if r.get("fit") is None else f"{r['fit']:.1f}"
        lines.append(f"| {names[key]} | {r['wall']:.1f} | {fit} | {r.get('trials', r['wall']):.1f} | {ratio} |")
    if "c" in ways:
        trial_share, fit_share = shares(ways["c"])
        lines += ["", f"Orchestration share of (c): {pct(fit_share)} of the trial slots not inside fit(); "
                  f"{pct(trial_share)} not inside Tune's trials. Ray start {ways['c']['ray_init']:.1f} s."]
        goals = {"orchestration share of (c) < 5 %": (fit_share if fit_share is not None else trial_share) < 0.05}
        if a:
            goals = {"(c)/(a) <= 0.65": ways["c"]["wall"] / a["wall"] <= 0.65, **goals}
        lines += ["", *[f"- goal {k}: **{'met' if v else 'missed'}**" for k, v in goals.items()]]
    return [*lines, ""]


def main() -> None:
    """Runs the chosen ways one after the other on the same machine and rewrites the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="current")
    parser.add_argument("--root", type=Path, default=HERE, help="The checkout whose code runs (default: this one).")
    parser.add_argument("--ways", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    parser.add_argument("--max-train", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    root = args.root.resolve()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                            text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="sde-bench-"))
    cache = work / "cache"
    t0 = time.time()
    ways: dict[str, dict[str, float]] = {}
    for way in args.ways:
        print(f"running ({way}) ...", flush=True)
        ways[way] = bare_loop(args, root, cache) if way == "a" else search(
            args, root, cache, work / "runs", 1 if way == "b" else 2)
    store = json.loads(STORE.read_text()) if STORE.exists() else {}
    store[args.label] = {"ways": ways, "note": (
        f"Commit {commit}; {machine()}; 24 designs (quick.yaml), {args.max_train} train records, {args.epochs} "
        f"epochs, ASHA off, 1 torch thread per trial; this label's bench time {(time.time() - t0) / 60:.1f} min.")}
    STORE.write_text(json.dumps(store, indent=1) + "\n")
    lines = ["# Orchestration overhead", "", "Wall of a search: from the start of Ray to the end of the last "
             "trial (the final test scoring and report excluded); (a) from loading the task to the last fit.", ""]
    for label, entry in store.items():
        lines += label_lines(label, entry)
    notes = RESULTS / "overhead_notes.md"
    publish("overhead.md", lines + (notes.read_text().splitlines() if notes.exists() else []))


if __name__ == "__main__":
    main()
