"""``sde-search robust RUN``: do the top designs stay on top under the paper's perturbations?

Each of the top K full-budget designs is re-scored from its checkpoint with sampling decoding
(temperature 0.2, top-k 40, top-p 0.9, seeds 1-5) and with every instruction paraphrase of the task
file, then retrained on half the training records. :func:`sde_search.stages.robust_checks` runs the checks and
writes ``robust.md`` / ``robust.json`` in the run folder and one MLflow run per design nested under the
search's parent run.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sde_search import analysis, scoring, trial
from sde_search.config import ConfigError, Task

SAMPLING = [scoring.Decoding(temperature=0.2, top_k=40, top_p=0.9, seed=s) for s in range(1, 6)]


def _split(task: Task) -> str:
    return "test_id" if "test_id" in task.splits else "eval_id"


def _stats(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _half_train(task: Task) -> Task:
    records = task.splits["train"]
    return replace(task, splits={**task.splits, "train": records[: max(1, len(records) // 2)]})


def check(task: Task, row: analysis.TrialRow, threads: int, retrain: bool) -> dict[str, Any]:
    """All perturbations of one trial's design; returns mean/std per perturbation."""
    split = _split(task)
    paraphrases = list(task.config.template.paraphrases)
    greedy, *sampled = scoring.evaluate_checkpoint(task, row.design, row.hparams, row.checkpoint, splits=[split],
                                                   threads=threads, decodings=[scoring.GREEDY, *SAMPLING])
    out: dict[str, Any] = {"trial": row.trial_id, "design": row.design.short(), "split": split,
                           "greedy": greedy["score"]}
    out["sampling_mean"], out["sampling_std"] = _stats([s["score"] for s in sampled])
    scores = [s["score"] for s in scoring.evaluate_checkpoint(  # one model build for all paraphrases
        task, row.design, row.hparams, row.checkpoint, splits=[split], threads=threads, instructions=paraphrases,
    )] if paraphrases else []
    out["paraphrase_mean"], out["paraphrase_std"] = _stats(scores)
    out["paraphrases"] = len(paraphrases)
    if retrain:
        half = _half_train(task)
        tmp = tempfile.mkdtemp(prefix="sde-robust-")
        trial.fit(half, row.design, row.hparams, report=lambda m, p: None, checkpoint_dir=tmp, threads=threads)
        last = str(sorted(Path(tmp).glob("report-*"))[-1])
        out["half_train"] = scoring.evaluate_checkpoint(half, row.design, row.hparams, last, splits=[split],
                                                        threads=threads)[0]["score"]
    return out


def top_trials(path: Path, top: int, fetch: Callable[[str], Path | None] | None = None) -> list[analysis.TrialRow]:
    """The best full-budget trial of each of the ``top`` best designs, its checkpoint still on disk.

    Args:
        path: The run's ``trials.json``.
        top: How many designs.
        fetch: For a checkpoint not on this disk (one on a bucket), a local copy of it, or None when it cannot.

    Raises:
        ConfigError: for ``top`` below 1, no such trial, or a chosen trial's checkpoint gone (before anything runs
            or is written, so an earlier ``robust.json`` stays as it was).
    """
    if top < 1:
        raise ConfigError([f"--top {top}: must be at least 1"])
    rows = [r for r in analysis.full_budget(analysis.load_rows(path), "score") if r.checkpoint]
    if not rows:
        raise ConfigError([f"{path}: no full-budget trial with a checkpoint to re-score; robust.json and robust.md "
                           "are left as they were"])
    chosen: list[analysis.TrialRow] = []
    for r in rows:  # best first: the best trial of each design
        if r.design not in {c.design for c in chosen}:
            chosen.append(r)
    chosen = chosen[:top]
    if fetch is not None:
        local = {r.trial_id: None if Path(str(r.checkpoint)).is_dir() else fetch(str(r.checkpoint)) for r in chosen}
        chosen = [replace(r, checkpoint=str(local[r.trial_id])) if local[r.trial_id] else r
                  for r in chosen]
    gone = [r for r in chosen if not Path(str(r.checkpoint)).is_dir()]
    if gone:
        where = ", ".join(f"{r.trial_id}: {str(r.checkpoint)[:200]}" for r in gone[:3])
        raise ConfigError([f"{path}: the checkpoints of the top trials are gone ({where}); robust re-scores them "
                           "from there (was the run's tune/ folder moved or deleted?)"])
    return chosen


def table(results: Sequence[dict[str, Any]], task: Task) -> str:
    """Markdown table of the robustness results."""
    head = (f"# Robustness of the top {len(results)} designs ({task.kind.score_key} on "
            f"{results[0]['split'] if results else '-'})\n\n"
            "| design | greedy | sampling (5 seeds) mean ± sd | paraphrases mean ± sd | half the train set |\n"
            "|---|---|---|---|---|\n")
    lines = [f"| {r['design']} | {r['greedy']:.3f} | {r['sampling_mean']:.3f} ± {r['sampling_std']:.3f} | "
             + (f"{r['paraphrase_mean']:.3f} ± {r['paraphrase_std']:.3f} ({r['paraphrases']})"
                if r["paraphrases"] else "- (no paraphrases in the task file)")
             + f" | {r.get('half_train', math.nan):.3f} |" for r in results]
    return head + "\n".join(lines) + "\n"
