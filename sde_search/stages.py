"""After the search: the stages that train or score again, then the report and MLflow.

* :func:`finish` ends a search: trials.json and summary.json from Tune's results, the seed stage, the report,
  the MLflow bookkeeping (trial runs tagged, the report attached to the parent run, the parent closed).
* :func:`final_stage` is the seed stage itself (:mod:`sde_search.seeds` chooses and judges,
  :mod:`sde_search.seedruns` trains), writing ``verdict.json`` and the winner's ``outputs/``.
* :func:`rescore` (``sde-search report RUN --rescore``) runs the seed stage again on a finished run.
* :func:`robust_checks` (``sde-search robust RUN``) re-scores the top designs under perturbations.

The report itself (:mod:`sde_search.report`) is built from the run folder's files alone; MLflow only mirrors
them, so a tracking store that cannot be reached costs the MLflow side, never the local results.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sde_search import analysis, generations, report, robust, runfolder, seedruns, seeds, storage, tracking
from sde_search.analysis import TrialRow
from sde_search.config import OBJECTIVE_METRIC, SpaceConfig, Task
from sde_search.design import hparams_of
from sde_search.runfolder import RunInfo
from sde_search.sampler import optuna_space

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the seed stage


def final_stage(task: Task, space: SpaceConfig, rows: Sequence[TrialRow], best: TrialRow | None, run_dir: Path,
                *, workers: int, threads: int, redo: bool = False) -> dict[str, Any]:
    """Runs the seed stage (:mod:`sde_search.seeds`), writes ``verdict.json`` and the winner's ``outputs/``.

    Args:
        task: The loaded task.
        space: The search space (``budget.seeds``, ``budget.seed_top``).
        rows: The search's trials.
        best: The best full-budget trial: its hyper-parameters are every candidate's.
        run_dir: The run folder.
        workers: Runs trained at once.
        threads: torch threads per run.
        redo: Score every run again (``report --rescore``), instead of keeping finished ones.
    """
    folder = run_dir / "seeds"
    if redo:
        shutil.rmtree(folder, ignore_errors=True)
    cands = seeds.candidates(rows, OBJECTIVE_METRIC[task.config.objective], space.budget.seed_top)
    fixed = hparams_of(optuna_space(space)[1])
    hparams = {**fixed, **best.hparams} if best else fixed
    jobs = seeds.plan(task, cands, hparams, space.budget.seeds, folder)
    results = seedruns.run(task, jobs, workers=workers, threads=threads)
    verdict = seeds.judge(task, cands, results, jobs, objective=task.config.objective)
    verdict.update(hparams=hparams, seeds=space.budget.seeds)
    runfolder.save_verdict(run_dir, verdict)
    save_stage_outputs(run_dir / "outputs", task, verdict, cands, results, jobs)
    return verdict


def save_stage_outputs(folder: Path, task: Task, verdict: Mapping[str, Any], cands: Sequence[seeds.Candidate],
                       results: Mapping[Path, Mapping[str, Any]], jobs: Sequence[seeds.Job]) -> None:
    """``outputs/<role>.<split>.jsonl`` (winner, es_sde, paper_baseline; first seed): gold, generation, parse."""
    shutil.rmtree(folder, ignore_errors=True)
    for cand in cands:
        roles = [r for r in cand.roles if r in ("es_sde", "paper_baseline")]
        if cand.design.short() == verdict.get("winner"):
            roles.append("winner")
        run = next((results[j.path] for j in jobs if j.design == cand.design and j.path in results), None)
        for role in roles if run else ():
            for split, data in run["splits"].items():
                generations.write(folder / f"{role}.{split}.jsonl", task, cand.design, split,
                                  [r["output"] for r in data["records"]])


def rescore(run_dir: Path, task: Task, space: SpaceConfig) -> dict[str, Any]:
    """``sde-search report RUN --rescore``: the seed stage again, every run trained and scored anew.

    Nothing else runs then, so on CPU it uses every core (one run per core); on a GPU one run at a time.
    """
    rows = analysis.load_rows(run_dir / "trials.json")
    summary = runfolder.summary_of(run_dir, task, space)
    best = report.pick_winner(rows, summary["metric"])
    workers = 1 if space.resources.gpu else max(1, os.cpu_count() or 1)
    verdict = final_stage(task, space, rows, best, run_dir, workers=workers, threads=1, redo=True)
    runfolder.update_summary(run_dir, rows, verdict)
    return verdict


# ---------------------------------------------------------------- end of a search


def finish(task: Task, space: SpaceConfig, info: RunInfo, results: Any, *, metric: str, wall_s: float,
           ray_init_s: float = math.nan) -> int:
    """Collects results, runs the seed stage, writes the report, logs it to MLflow and closes the parent run.

    The report's text and where to find it are logged (INFO) for the command to show.

    Returns:
        The command's exit code (0).
    """
    run_dir = Path(info.run_dir)
    rows = runfolder.collect(results, optuna_space(space)[1])
    best = report.pick_winner(rows, metric)
    tracking.tracked("merging resumed trial runs", tracking.merge_duplicate_runs, info)
    tracking.tracked("closing stale runs", tracking.close_stale_runs, info)
    analysis.save_rows(run_dir / "trials.json", rows)
    runfolder.save_summary(run_dir, runfolder.new_summary(info.name, info.space_path, task, space, metric=metric,
                                                          wall_s=wall_s, ray_init_s=ray_init_s))
    t0 = time.time()
    log.info("seed stage: %d best designs + ES-SDE + baseline, %d seeds each (finished runs are kept)",
             space.budget.seed_top, space.budget.seeds)
    workers = max(1, min(space.budget.max_concurrent, (os.cpu_count() or 1) // max(1, int(space.resources.cpu))))
    try:
        verdict = final_stage(task, space, rows, best, run_dir, workers=1 if space.resources.gpu else workers,
                              threads=max(1, int(space.resources.cpu)))
    except Exception as exc:  # noqa: BLE001 - the search's own results must still reach report.md and MLflow
        log.warning("warning: the seed stage failed (%s: %s); the report has no verdict. Run it again with: "
                    "sde-search report %s --rescore", type(exc).__name__, str(exc)[:300], run_dir.name)
        verdict = {}
    summary = runfolder.update_summary(run_dir, rows, verdict)
    summary["seed_stage_s"] = time.time() - t0
    runfolder.save_summary(run_dir, summary)
    winner = next((r for r in rows if r.trial_id == summary.get("winner")), None)
    tracking.tracked("tagging trial runs", tracking.tag_runs, info, rows, winner)
    text = report.build(run_dir, task, space)
    final, tags = tracking.final_metrics(rows, verdict, wall_s=wall_s, ray_init_s=ray_init_s)
    tracking.tracked("attaching the report", tracking.log_to_parent, info,
                     [run_dir / n for n in tracking.REPORT_FILES], final, tags)
    tracking.tracked("closing the parent run", tracking.close_parent, info)
    log.info("\n%s", text)
    log.info("\nreport: %s\nreview in MLflow: sde-search ui --runs-dir %s   (it prints the address of the runs "
             "table; store: %s)", run_dir / "report.md", run_dir.parent, info.tracking_uri)
    return 0


# ---------------------------------------------------------------- robustness


def robust_checks(info: RunInfo, task: Task, top: int, threads: int = 1, retrain: bool = True) -> str:
    """Checks the top designs of a finished search (``sde-search robust RUN``); returns the markdown table.

    ``robust.json`` and ``robust.md`` are written before MLflow is told, so a tracking store that cannot be
    reached costs the MLflow runs, not the results.

    Raises:
        ConfigError: for ``top`` below 1 or no trial to re-score (:func:`sde_search.robust.top_trials`).
    """
    run_dir = Path(info.run_dir)
    with tempfile.TemporaryDirectory(prefix="sde-robust-") as tmp:  # checkpoints fetched from a bucket
        chosen = robust.top_trials(run_dir / "trials.json", top,
                                   fetch=lambda recorded: storage.fetch_checkpoint(info, recorded, Path(tmp)))
        results = []
        for r in chosen:
            log.info("robustness of %s (trial %s) ...", r.design.short(), r.trial_id)
            results.append(robust.check(task, r, threads, retrain))
    (run_dir / "robust.json").write_text(json.dumps(results, indent=1))
    md = robust.table(results, task)
    (run_dir / "robust.md").write_text(md)
    try:
        for r, res in zip(chosen, results, strict=True):
            tracking.log_nested_run(info, f"robust-{r.trial_id}", {"design": r.design.short(), "trial": r.trial_id},
                                    {k: v for k, v in res.items() if isinstance(v, float)},
                                    {"sde.kind": "robust", "design": r.design.short()})
        tracking.log_to_parent(info, [run_dir / "robust.md", run_dir / "robust.json"], {})
    except Exception as exc:  # noqa: BLE001 - the results are on disk; MLflow only mirrors them
        log.warning("warning: MLflow step failed (%s: %s); the results are in %s", type(exc).__name__,
                    str(exc)[:200], run_dir / "robust.md")
    return md
