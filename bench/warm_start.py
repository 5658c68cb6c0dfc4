"""Warm start across domains: a search on the demo's other domain, cold vs warm-started from a demo search.

Runs ``sde-search`` on ``examples/demo_masa.yaml`` (the source domain, unless ``--source RUN`` names a finished
one), then twice on ``examples/demo_masa_ood.yaml`` with the same budget and seed: cold, and with
``--warm-start`` from the source run. Prints the best full-budget eval score after each trial, in the order
the trials started. Writes ``bench/results/warm_start.md``.

Usage: python bench/warm_start.py [--trials 8] [--source RUN --runs-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results_md import machine, publish  # noqa: E402

from sde_search.design import Design  # noqa: E402


def search(runs: Path, task: str, name: str, trials: int, *extra: str) -> list[dict]:
    """One search; returns its trials in start order."""
    sets = [f"space.budget.num_samples={trials}", "space.sampler.n_startup_trials=3"]
    subprocess.run([sys.executable, "-m", "sde_search.cli", "--task", str(ROOT / "examples" / task),
                    "--runs-dir", str(runs), "--name", name, *[x for s in sets for x in ("--set", s)], *extra],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    rows = json.loads((runs / name / "trials.json").read_text())
    return sorted(rows, key=lambda r: r["metrics"].get("timestamp", 0) - r["metrics"].get("time_total_s", 0))


def best_so_far(rows: list[dict]) -> list[float]:
    """Best full-budget score after each trial (NaN until one finished at full budget)."""
    out, best = [], float("nan")
    for r in rows:
        if r["status"] == "full" and not (r["metrics"]["score"] <= best):
            best = r["metrics"]["score"]
        out.append(best)
    return out


def main() -> None:
    """Source search (unless given), then cold and warm searches on the other domain."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--source", help="A finished demo_masa run to warm-start from.")
    parser.add_argument("--runs-dir", help="Where --source lives.")
    args = parser.parse_args()
    runs = Path(args.runs_dir).resolve() if args.runs_dir else Path(tempfile.mkdtemp(prefix="sde-warm-"))
    source = args.source
    if not source:
        search(runs, "demo_masa.yaml", "source", 12)
        source = "source"
    cold = search(runs, "demo_masa_ood.yaml", "cold", args.trials)
    warm = search(runs, "demo_masa_ood.yaml", "warm", args.trials, "--warm-start", source)
    curves = {"cold": best_so_far(cold), "warm": best_so_far(warm)}
    lines = ["# Warm start: demo_masa -> demo_masa_ood (the other 4 aspects)", "",
             f"Machine: {machine()}. quick.yaml (24 designs), {args.trials} trials "
             "per search, 2 at once, TPE seed 0, ASHA on, tiny model; warm = the source search's best 3 designs "
             "enqueued after ES-SDE and the baseline.", "",
             "| after trial | " + " | ".join(str(i) for i in range(1, args.trials + 1)) + " |",
             "|---|" + "---|" * args.trials,
             *[f"| best {k} | " + " | ".join(f"{v:.3f}" for v in c) + " |" for k, c in curves.items()], "",
             "Trials in start order:", ""]
    for name, rows in (("cold", cold), ("warm", warm)):
        lines.append(f"- {name}: " + ", ".join(f"{Design.from_params(r['design']).short()} "
                                                f"({r['metrics'].get('score', float('nan')):.3f}, {r['status']})"
                                                for r in rows))
    publish("warm_start.md", lines)


if __name__ == "__main__":
    main()
