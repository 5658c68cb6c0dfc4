"""Orchestration overhead: the same designs trained by a bare loop, and by sde-search with 1 and 2 trials at once.

(a) a sequential Python loop calling ``train.fit`` directly (no Ray, no MLflow, no Optuna);
(b) ``sde-search`` with ``max_concurrent 1``; (c) ``sde-search`` with ``max_concurrent 2``.
Same task, same budget, same designs (brute force over a 12-design space, ASHA off, so that every
design trains to the end in all three). Prints (b)/(a), (c)/(a) and the orchestration share of (c):
the part of its trial slots not spent inside trials. Goals (issue 9): (c)/(a) <= 0.65 on 2 cores,
orchestration share < 5 %.

Usage: python bench/overhead.py [--max-train 200 --epochs 4]; writes bench/results/overhead.md.
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

from results_md import machine, publish

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "examples" / "demo_masa.yaml"
SPACE = ["space.design.label_style=text", "space.sampler.name=brute_force", "space.budget.num_samples=12",
         "space.asha.enabled=false"]


def task_overrides(args: argparse.Namespace) -> list[str]:
    """The trial budget shared by all three ways."""
    return [f"data.max_train={args.max_train}", f"train.epochs={args.epochs}", "train.reports_per_epoch=1",
            "data.max_eval=40", "data.max_test=40"]


def bare_loop(args: argparse.Namespace, cache: Path) -> tuple[float, float]:
    """(a): every design of the space through ``fit`` in one process; returns (wall, seconds inside fit)."""
    code = f"""
import json, os, sys, time
from sde_search.cli import load_task_and_space
import itertools
from sde_search.design import Design
from sde_search import train
t0 = time.perf_counter()
task, space, _ = load_task_and_space({str(TASK)!r}, None, {task_overrides(args) + SPACE!r})
inside = 0.0
choices = space.design_choices()
for values in itertools.product(*choices.values()):
    design = Design(**dict(zip(choices, values)))
    t1 = time.perf_counter()
    train.fit(task, design, None, report=lambda m, p: None, threads=1)
    inside += time.perf_counter() - t1
print(json.dumps({{"wall": time.perf_counter() - t0, "inside": inside}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True,
                         env={**os.environ, "SDE_CACHE": str(cache)})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["wall"], result["inside"]


def search(args: argparse.Namespace, cache: Path, runs: Path, concurrent: int) -> tuple[float, float]:
    """(b)/(c): the search; returns (wall of the search without test scoring, seconds inside trials)."""
    name = f"c{concurrent}"
    sets = [x for o in [*task_overrides(args), *SPACE, f"space.budget.max_concurrent={concurrent}"]
            for x in ("--set", o)]
    subprocess.run([sys.executable, "-m", "sde_search.cli", "--task", str(TASK), "--runs-dir", str(runs),
                    "--name", name, *sets], cwd=ROOT, check=True, capture_output=True, text=True,
                   env={**os.environ, "SDE_CACHE": str(cache)})
    summary = json.loads((runs / name / "summary.json").read_text())
    rows = json.loads((runs / name / "trials.json").read_text())
    return summary["wall_s"], sum(r["metrics"].get("time_total_s", 0.0) for r in rows)


def main() -> None:
    """Runs (a), (b), (c) one after the other on the same machine and writes the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-train", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sde-bench-"))
    cache = work / "cache"
    t0 = time.time()
    a_wall, a_inside = bare_loop(args, cache)
    b_wall, b_inside = search(args, cache, work / "runs", 1)
    c_wall, c_inside = search(args, cache, work / "runs", 2)
    share = max(0.0, 1 - c_inside / (2 * c_wall))
    goals = {"(c)/(a) <= 0.65": c_wall / a_wall <= 0.65, "orchestration share of (c) < 5 %": share < 0.05}
    lines = ["# Orchestration overhead", "",
             f"Machine: {machine()}. "
             f"12 designs (quick.yaml with text labels), {args.max_train} train records, {args.epochs} epochs, "
             f"ASHA off, 1 torch thread per trial; total bench time {(time.time() - t0) / 60:.1f} min.", "",
             "| way | wall s | seconds inside fit / trials | ratio to (a) |", "|---|---|---|---|",
             f"| (a) bare loop calling fit | {a_wall:.1f} | {a_inside:.1f} | 1.00 |",
             f"| (b) sde-search, 1 at once | {b_wall:.1f} | {b_inside:.1f} | {b_wall / a_wall:.2f} |",
             f"| (c) sde-search, 2 at once | {c_wall:.1f} | {c_inside:.1f} | {c_wall / a_wall:.2f} |", "",
             f"Orchestration share of (c) (trial slots not spent inside trials): {share:.1%}.", "",
             *[f"- goal {k}: **{'met' if v else 'missed'}**" for k, v in goals.items()], ""]
    publish("overhead.md", lines)


if __name__ == "__main__":
    main()
