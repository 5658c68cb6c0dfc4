"""What ASHA saves: the same search with and without early stopping (same seed, sampler and trials).

Runs ``sde-search`` twice on the synthetic MASA task over ``sde_core.yaml`` (24 trials, 2 at once): ASHA on
(the product's default: grace period 2 reports, reduction factor 2) and ASHA off. Prints train steps spent,
wall time and the regret of each chosen design, measured on the stored grid of ``bench/search_quality.py``
when it exists (the grid score of the winner vs the grid's best), else against the better of the two runs.
Goal (issue 9): ASHA spends <= 50 % of the steps with <= 1 point (0.01) regret.

Usage: python bench/asha_savings.py [--trials 24] [--grace 2] [--rf 2] [--reuse-off RUN_DIR];
writes bench/results/asha_savings.md. ``--reuse-off`` takes the ASHA-off run from an earlier call (its steps
and winner do not depend on ASHA; its wall is then not measured side by side, and the table says so).
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
SPACE = ROOT / "search_spaces" / "sde_core.yaml"


def run(runs: Path, name: str, asha: bool, trials: int, grace: int = 2, rf: int = 2) -> dict:
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


def main() -> None:
    """Both runs, then the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--grace", type=int, default=2, help="ASHA grace period, in reports (12 per trial).")
    parser.add_argument("--rf", type=int, default=2, help="ASHA reduction factor.")
    parser.add_argument("--reuse-off", metavar="RUN_DIR", help="An earlier ASHA-off run (folder named no_asha).")
    args = parser.parse_args()
    runs = Path(tempfile.mkdtemp(prefix="sde-asha-"))
    on = run(runs, "asha", True, args.trials, args.grace, args.rf)
    off = run(Path(args.reuse_off).parent if args.reuse_off else runs, "no_asha", False, args.trials)
    grid_file = ROOT / "bench" / "results" / f"grid_{SPACE.stem}.json"
    if grid_file.exists():
        scores = json.loads(grid_file.read_text())["scores"]
        best, source = max(scores.values()), f"the stored grid ({grid_file.name})"
        regret = {k: best - scores[r["winner"]] for k, r in (("on", on), ("off", off))}
    else:
        best, source = max(on["score"], off["score"]), "the better of the two runs"
        regret = {"on": best - on["score"], "off": best - off["score"]}
    share = on["steps"] / off["steps"]
    lines = ["# ASHA savings", "",
             f"Machine: {machine()}. `{SPACE.name}`, {args.trials} trials, 2 at once, "
             f"TPE seed 0, demo budget; ASHA grace period {args.grace} of 12 reports, reduction factor {args.rf}; "
             f"regret against {source}."
             + (" The ASHA-off run is reused from an earlier call (`--reuse-off`), so the wall ratio is not "
                "side by side." if args.reuse_off else ""), "",
             "| run | train steps | wall min | stopped early | winner | winner's eval score | regret |",
             "|---|---|---|---|---|---|---|",
             *[f"| ASHA {k} | {r['steps']:.0f} | {r['wall'] / 60:.1f} | {r['stopped']} | {r['winner']} | "
               f"{r['score']:.3f} | {regret[k]:.3f} |" for k, r in (("on", on), ("off", off))], "",
             f"Steps with ASHA / without: {share:.0%}; wall ratio {on['wall'] / off['wall']:.2f}.", "",
             f"- goal <= 50 % of the steps: **{'met' if share <= 0.5 else 'missed'}**",
             f"- goal <= 1 point regret: **{'met' if regret['on'] <= 0.01 else 'missed'}** ({regret['on']:.3f})", ""]
    publish("asha_savings.md", lines)


if __name__ == "__main__":
    main()
