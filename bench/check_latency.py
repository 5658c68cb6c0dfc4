"""`sde-search --check` latency against a bare interpreter start, measured side by side.

Usage: python bench/check_latency.py [--repeat 7]
Goal (issue 9): --check wall <= 1.5 s. Prints the medians and their ratio; writes bench/results/check_latency.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_md import machine, publish

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd: list[str]) -> float:
    """Seconds one command takes (it must succeed)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    """Alternates the two commands ``--repeat`` times and reports medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    bare = [sys.executable, "-c", "pass"]
    check = [sys.executable, "-m", "sde_search.cli", "--task", "examples/demo_masa.yaml", "--check"]
    wall(check)  # warm the file cache
    times: dict[str, list[float]] = {"python -c pass": [], "sde-search --check": []}
    for _ in range(args.repeat):  # alternate, so that load on the machine hits both alike
        times["python -c pass"].append(wall(bare))
        times["sde-search --check"].append(wall(check))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["sde-search --check"] / med["python -c pass"]
    goal = "met" if med["sde-search --check"] <= 1.5 else "missed"
    lines = ["# `sde-search --check` latency", "",
             f"Machine: {machine()}; {args.repeat} alternating runs, medians.", "",
             "| command | median s | min s | max s |", "|---|---|---|---|",
             *[f"| `{k}` | {med[k]:.3f} | {min(v):.3f} | {max(v):.3f} |" for k, v in times.items()], "",
             f"Ratio --check / bare interpreter: {ratio:.1f}x. Goal <= 1.5 s wall: **{goal}** "
             f"({med['sde-search --check']:.2f} s).", ""]
    publish("check_latency.md", lines)


if __name__ == "__main__":
    main()
