"""``sde-search robust RUN``: do the top designs stay on top under the paper's perturbations?

Each of the top K full-budget designs is re-scored from its checkpoint with sampling decoding
(temperature 0.2, top-k 40, top-p 0.9, seeds 1-5) and with every instruction paraphrase of the task
file, then retrained on half the training records. Results go to ``robust.md`` / ``robust.json``
in the run folder and to one MLflow run per design nested under the search's parent run.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sde_search import analysis, tracking, train
from sde_search.config import Task
from sde_search.search import RunInfo

SAMPLING = [train.Decoding(temperature=0.2, top_k=40, top_p=0.9, seed=s) for s in range(1, 6)]


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
    greedy, *sampled = train.evaluate_checkpoint(task, row.design, row.hparams, row.checkpoint, splits=[split],
                                                 threads=threads, decodings=[train.GREEDY, *SAMPLING])
    out: dict[str, Any] = {"trial": row.trial_id, "design": row.design.short(), "split": split,
                           "greedy": greedy["score"]}
    out["sampling_mean"], out["sampling_std"] = _stats([s["score"] for s in sampled])
    scores = [s["score"] for s in train.evaluate_checkpoint(  # one model build for all paraphrases
        task, row.design, row.hparams, row.checkpoint, splits=[split], threads=threads, instructions=paraphrases,
    )] if paraphrases else []
    out["paraphrase_mean"], out["paraphrase_std"] = _stats(scores)
    out["paraphrases"] = len(paraphrases)
    if retrain:
        half = _half_train(task)
        tmp = tempfile.mkdtemp(prefix="sde-robust-")
        train.fit(half, row.design, row.hparams, report=lambda m, p: None, checkpoint_dir=tmp, threads=threads)
        last = str(sorted(Path(tmp).glob("report-*"))[-1])
        out["half_train"] = train.evaluate_checkpoint(half, row.design, row.hparams, last, splits=[split],
                                                      threads=threads)[0]["score"]
    return out


def run(info: RunInfo, task: Task, top: int, threads: int = 1, retrain: bool = True) -> str:
    """Checks the top designs of a finished search; returns the markdown table."""
    run_dir = Path(info.run_dir)
    rows = [r for r in analysis.full_budget(analysis.load_rows(run_dir / "trials.json"), "score") if r.checkpoint]
    seen, chosen = set(), []
    for r in rows:
        if r.design not in seen:
            seen.add(r.design)
            chosen.append(r)
    results = []
    for r in chosen[:top]:
        print(f"robustness of {r.design.short()} (trial {r.trial_id}) ...", flush=True)
        res = check(task, r, threads, retrain)
        results.append(res)
        tracking.log_nested_run(info, f"robust-{r.trial_id}", {"design": r.design.short(), "trial": r.trial_id},
                                {k: v for k, v in res.items() if isinstance(v, float)},
                                {"sde.kind": "robust", "design": r.design.short()})
    (run_dir / "robust.json").write_text(json.dumps(results, indent=1))
    md = table(results, task)
    (run_dir / "robust.md").write_text(md)
    tracking.log_to_parent(info, [run_dir / "robust.md", run_dir / "robust.json"], {})
    return md


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
