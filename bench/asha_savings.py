"""What ASHA saves: the same search with and without early stopping (same seed, sampler and trials).

Runs ``sde-search`` twice on the synthetic MASA task over ``sde_core.yaml`` (24 trials, 2 at once): ASHA on
(``--grace``/``--rf``, default 3 and 3 as in ``sde_core.yaml``) and ASHA off. Prints train steps spent,
wall time and the regret of each chosen design, measured on the stored grid of ``bench/search_quality.py``
when it exists (the grid score of the winner vs the grid's best), else against the better of the two runs.
Goal (issue 9): ASHA spends <= 50 % of the steps with <= 1 point (0.01) regret.

Usage: python bench/asha_savings.py [--trials 24] [--grace 3] [--rf 3] [--reuse-off RUN_DIR]. Each
configuration's figures are kept in bench/results/asha_savings.json and bench/results/asha_savings.md lists
them all. ``--reuse-off`` takes the ASHA-off run from an earlier call (its steps and winner do not depend on
ASHA; the table names the run it came from).
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

TASK = ROOT / "examples" / "demo_masa.yaml"
STORE = ROOT / "bench" / "results" / "asha_savings.json"
SPACE = ROOT / "search_spaces" / "sde_core.yaml"


def run(runs: Path, name: str, asha: bool, trials: int, grace: int = 3, rf: int = 3) -> dict:
    """One search (unless ``runs/name`` is already a finished one); returns steps, wall and the winner."""
    sets = [f"space.asha.enabled={str(asha).lower()}", f"space.budget.num_samples={trials}",
            "space.budget.max_concurrent=2", f"space.asha.grace_period={grace}", f"space.asha.reduction_factor={rf}"]
    if not (runs / name / "summary.json").exists():
        subprocess.run([sys.executable, "-m", "sde_search.cli", "--task", str(TASK), "--space", str(SPACE),
                        "--runs-dir", str(runs), "--name", name, *[x for s in sets for x in ("--set", s)]],
                       cwd=ROOT, check=True, capture_output=True, text=True)
    summary = json.loads((runs / name / "summary.json").read_text())
    rows = json.loads((runs / name / "trials.json").read_text())
    winner = next(r for r in rows if r["trial_id"] == summary["winner"])
    return {"wall": summary["wall_s"], "steps": sum(r["metrics"].get("step", 0) for r in rows),
            "stopped": sum(r["status"] == "stopped" for r in rows),
            "winner": Design.from_params(winner["design"]).short(), "score": winner["metrics"]["score"]}


def regrets(on: dict, off: dict) -> tuple[dict[str, float], str]:
    """Regret of each run's winner: on the stored grid when it exists, else against the better of the two."""
    grid_file = ROOT / "bench" / "results" / f"grid_{SPACE.stem}.json"
    if grid_file.exists():
        scores = json.loads(grid_file.read_text())["scores"]
        best = max(scores.values())
        regret = {k: best - scores[r["winner"]] for k, r in (("on", on), ("off", off))}
        return regret, f"the stored grid ({grid_file.name})"
    best = max(on["score"], off["score"])
    return {"on": best - on["score"], "off": best - off["score"]}, "the better of the two runs"


def table(store: dict) -> list[str]:
    """Every configuration tried, ASHA off once per source run."""
    lines = ["# ASHA savings", "",
             f"`{SPACE.name}` on the synthetic MASA task (demo budget: 12 epochs, one report each), 24 trials, "
             "2 at once, TPE seed 0; the same search with ASHA off is the reference. Regret: grid best - grid score "
             "of the chosen design. Goal (issue 9): <= 50 % of the steps with <= 1 point (0.01) regret.", "",
             "| ASHA | train steps | share of ASHA-off steps | wall min | wall ratio | stopped early | winner | "
             "winner's eval score | regret | goals |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, e in store.items():
        on, off, reg = e["on"], e["off"], e["regret"]
        share = on["steps"] / off["steps"]
        goals = ("both met" if share <= 0.5 and reg["on"] <= 0.01 else
                 "steps met" if share <= 0.5 else "regret met" if reg["on"] <= 0.01 else "both missed")
        lines.append(f"| {label} | {on['steps']:.0f} | {share:.0%} | {on['wall'] / 60:.1f} | "
                     f"{on['wall'] / off['wall']:.2f} | {on['stopped']} | {on['winner']} | {on['score']:.3f} | "
                     f"{reg['on']:.3f} | {goals} |")
    off_rows = {json.dumps(e["off"], sort_keys=True): e for e in store.values()}
    for e in off_rows.values():
        off = e["off"]
        lines.append(f"| off ({e['off_source']}) | {off['steps']:.0f} | 100% | {off['wall'] / 60:.1f} | 1.00 | 0 | "
                     f"{off['winner']} | {off['score']:.3f} | {e['regret']['off']:.3f} | reference |")
    notes = ROOT / "bench" / "results" / "asha_savings_notes.md"
    return lines + (["", *notes.read_text().splitlines()] if notes.exists() else [])


def main() -> None:
    """The ASHA-on run (and the ASHA-off one unless reused), then the table of every configuration stored."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--grace", type=int, default=3, help="ASHA grace period, in reports (12 per trial).")
    parser.add_argument("--rf", type=int, default=3, help="ASHA reduction factor.")
    parser.add_argument("--reuse-off", metavar="RUN_DIR", help="An earlier ASHA-off run (folder named no_asha).")
    args = parser.parse_args()
    runs = Path(tempfile.mkdtemp(prefix="sde-asha-"))
    on = run(runs, "asha", True, args.trials, args.grace, args.rf)
    off_dir = Path(args.reuse_off).parent if args.reuse_off else runs
    off = run(off_dir, "no_asha", False, args.trials)
    regret, source = regrets(on, off)
    store = json.loads(STORE.read_text()) if STORE.exists() else {}
    store[f"grace {args.grace}, rf {args.rf}"] = {
        "on": on, "off": off, "regret": regret, "source": source, "machine": machine(),
        "off_source": f"reused from {off_dir.name}" if args.reuse_off else f"run beside it in {runs.name}"}
    STORE.write_text(json.dumps(store, indent=1) + "\n")
    print(f"ASHA-off run kept in {off_dir / 'no_asha'} (pass it to --reuse-off)")
    publish("asha_savings.md", table(store))


if __name__ == "__main__":
    main()
