"""Real-data study: one search on a task under ``examples/real/``, its report kept as ``bench/results/real_<name>.md``.

Runs ``sde-search`` on the task file (human-labelled data from ``../shared/data``, read by path, never copied)
with the stated space and trial budget, then publishes the run's ``report.md`` (leaderboard, winner, held-out
gains over ES-SDE and the paper baseline with bootstrap intervals, option effects, importance) under a header
naming the machine, the command and the wall time. The run folder itself (checkpoints) stays in a temp dir.

Usage: python bench/real_study.py examples/real/mams_acsa.yaml [--space search_spaces/sde_core.yaml]
       [--trials 24] [--set KEY=VALUE ...] [--out NAME] [--rebuild RUNS_DIR]

``--out NAME`` names the results file and figure folder (default ``real_<task>``). ``--rebuild RUNS_DIR``
re-renders the report of a finished study run there (``sde-search report``) and publishes it again, without
training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results_md import RESULTS, machine, publish  # noqa: E402


def main() -> None:
    """The search, then its report under a header."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", help="Task file, e.g. examples/real/mams_acsa.yaml.")
    parser.add_argument("--space", default="search_spaces/sde_core.yaml")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--rebuild", metavar="RUNS_DIR", help="Publish the report of a finished run again.")
    parser.add_argument("--out", metavar="NAME", help="Results name (default real_<task>; the run folder keeps "
                        "real_<task>).")
    args = parser.parse_args()
    task = Path(args.task)
    if not (ROOT / task).exists() and not task.exists():
        sys.exit(f"{task}: no such task file")
    runs = Path(args.rebuild or tempfile.mkdtemp(prefix="sde-real-"))
    name = f"real_{task.stem}"
    sets = [f"space.budget.num_samples={args.trials}", *args.set]
    command = ["sde-search", "--task", str(task), "--space", args.space, *[x for s in sets for x in ("--set", s)]]
    print(" ".join(command), f"(runs in {runs})", flush=True)
    start = time.monotonic()
    cli = [sys.executable, "-m", "sde_search.cli"]
    if args.rebuild:
        subprocess.run([*cli, "report", name, "--runs-dir", str(runs)], cwd=ROOT, check=True, capture_output=True)
        wall = json.loads((runs / name / "summary.json").read_text())["wall_s"]  # the search alone
    else:
        subprocess.run([*cli, *command[1:], "--runs-dir", str(runs), "--name", name], cwd=ROOT, check=True)
        wall = time.monotonic() - start
    report = (runs / name / "report.md").read_text()
    out = args.out or name
    plots = RESULTS / out
    shutil.rmtree(plots, ignore_errors=True)
    shutil.copytree(runs / name / "plots", plots, ignore=shutil.ignore_patterns("*.html", "*.js"))
    lines = [f"# Real-data study: {task.stem}", "",
             f"Machine: {machine()}. Command: `{' '.join(command)}`. "
             f"Wall {wall / 60:.1f} min{'' if args.rebuild else ' including test scoring'}. "
             f"PNGs in `{plots.relative_to(ROOT)}/`.", "",
             *[line.replace("](plots/", f"]({out}/") for line in report.splitlines()
               if not line.startswith("- interactive:")]]  # the Optuna HTML stays with the run (plotly.js is large)
    publish(f"{out}.md", lines)


if __name__ == "__main__":
    main()
