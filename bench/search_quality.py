"""Search quality: TPE vs random against an exhaustive grid of the space, on the synthetic MASA task.

1. The grid (stored once in ``bench/results/grid_<space>.json``): every design of the space trained at the
   demo budget by a real ``sde-search`` run (brute force sampler, ASHA off, 2 at once).
2. TPE (as the product runs it: seeded, multivariate, DistinctSampler, ES-SDE and the baseline first) and
   random search (DistinctSampler over RandomSampler, same first points) at budgets 12/24/48, 5 seeds each,
   replayed on the stored grid: each trial's value is the grid score of its design, so a seed costs no
   training. ASHA is left out of the replay (every trial counts at full budget).
Prints the rank (1 = best in the grid) and regret (grid best - found) per sampler and budget; writes
``bench/results/search_quality.md``. Goal (issue 9): TPE finds a top-5 % design within 24 trials and is at
least as good as random on the median.

Usage: python bench/search_quality.py [--space search_spaces/sde_core.yaml] [--regrid]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from results_md import machine, publish  # noqa: E402

from sde_search.config import load_space  # noqa: E402
from sde_search.design import ES_SDE, PAPER_BASELINE, Design  # noqa: E402
from sde_search.sampler import DistinctSampler, optuna_space  # noqa: E402

TASK = ROOT / "examples" / "demo_masa.yaml"
BUDGETS = (12, 24, 48)
SEEDS = range(5)


def grid(space_path: Path, regrid: bool) -> dict[str, float]:
    """design.short() -> eval score of every design, from a real brute-force search (stored once)."""
    out = ROOT / "bench" / "results" / f"grid_{space_path.stem}.json"
    if out.exists() and not regrid:
        return json.loads(out.read_text())["scores"]
    space = load_space(space_path)
    runs = Path(tempfile.mkdtemp(prefix="sde-grid-"))
    sets = ["space.sampler.name=brute_force", f"space.budget.num_samples={space.size()}", "space.asha.enabled=false",
            "space.budget.max_concurrent=2"]
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "sde_search.cli", "--task", str(TASK), "--space", str(space_path),
                    "--runs-dir", str(runs), "--name", "grid", *[x for s in sets for x in ("--set", s)]],
                   cwd=ROOT, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rows = json.loads((runs / "grid" / "trials.json").read_text())
    scores = {Design.from_params(r["design"]).short(): r["metrics"].get("score", math.nan) for r in rows}
    out.write_text(json.dumps({"space": space_path.name, "task": TASK.name, "minutes": (time.time() - t0) / 60,
                               "trials": len(rows), "scores": scores}, indent=1))
    return scores


def replay(space_path: Path, scores: dict[str, float], sampler_name: str, budget: int, seed: int) -> float:
    """Best grid score among the designs one seeded search of ``budget`` trials proposes."""
    space = load_space(space_path)
    searched, fixed = optuna_space(space)
    if sampler_name == "tpe":
        base: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=space.sampler.n_startup_trials, multivariate=True, constant_liar=True)
    else:
        base = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(direction="maximize", sampler=DistinctSampler(base, searched, seed=seed))
    for preset in (ES_SDE, PAPER_BASELINE):  # as the product enqueues them
        study.enqueue_trial({k: v for k, v in preset.to_params().items() if k in searched})
    for _ in range(budget):
        trial = study.ask(fixed_distributions=searched)
        study.tell(trial, scores[Design.from_params({**fixed, **trial.params}).short()])
    return study.best_value


def main() -> None:
    """Grid once, then the replays; prints and writes the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "search_spaces" / "sde_core.yaml"))
    parser.add_argument("--regrid", action="store_true", help="Train the grid again even if stored.")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space_path = Path(args.space).resolve()
    scores = grid(space_path, args.regrid)
    ranked = sorted(scores.values(), reverse=True)
    best, top5 = ranked[0], max(1, math.ceil(0.05 * len(ranked)))

    def rank(value: float) -> int:
        return 1 + sum(v > value for v in ranked)

    lines = ["# Search quality: TPE vs random on a stored grid", "",
             f"Machine: {machine()}. Grid: all {len(scores)} designs of "
             f"`{space_path.name}` on `{TASK.name}` (tiny model, demo budget), best score {best:.3f}; top 5 % = "
             f"rank <= {top5}. Replays: {len(SEEDS)} seeds per sampler and budget, ES-SDE and the baseline first, "
             "no ASHA in the replay.", "",
             "| sampler | trials | median rank | ranks (seeds) | median regret | top-5 % found |",
             "|---|---|---|---|---|---|"]
    medians: dict[tuple[str, int], float] = {}
    for budget in BUDGETS:
        for name in ("tpe", "random"):
            found = [replay(space_path, scores, name, budget, s) for s in SEEDS]
            ranks = [rank(v) for v in found]
            regrets = [best - v for v in found]
            medians[(name, budget)] = statistics.median(regrets)
            lines.append(f"| {name} | {budget} | {statistics.median(ranks):.0f} | {ranks} | "
                         f"{statistics.median(regrets):.3f} | {sum(r <= top5 for r in ranks)}/{len(SEEDS)} |")
    tpe24 = [rank(replay(space_path, scores, "tpe", 24, s)) for s in SEEDS]
    goal_a = statistics.median(tpe24) <= top5
    goal_b = all(medians[("tpe", b)] <= medians[("random", b)] for b in BUDGETS)
    lines += ["", f"- goal: TPE finds a top-5 % design within 24 trials (median over seeds): "
              f"**{'met' if goal_a else 'missed'}** (ranks {tpe24})",
              f"- goal: TPE at least as good as random on the median regret at every budget: "
              f"**{'met' if goal_b else 'missed'}**", ""]
    publish("search_quality.md", lines)


if __name__ == "__main__":
    main()
