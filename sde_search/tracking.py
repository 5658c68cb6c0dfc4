"""MLflow bookkeeping of a search: the trial runs under the parent, their tags, artifacts and repairs.

``MLflowLoggerCallback`` writes each trial's metrics while Tune runs; this module does what it
cannot: close runs a killed driver left RUNNING, merge the second run a resumed trial opens,
tag runs with their design and budget, attach the report to the parent run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from sde_search.analysis import TrialRow

if TYPE_CHECKING:
    from sde_search.search import RunInfo


def client(info: RunInfo) -> MlflowClient:
    """A client of the search's tracking store."""
    return MlflowClient(info.tracking_uri)


def child_runs(info: RunInfo) -> list[Any]:
    """The trial runs nested under the search's parent run."""
    c = client(info)
    exp = c.get_experiment_by_name(info.experiment)
    return c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{info.parent_run_id}' "
                         "and tags.`sde.kind` = 'trial'", max_results=5000)


def close_stale_runs(info: RunInfo) -> int:
    """Marks trial runs left RUNNING by a killed driver as KILLED; returns how many."""
    c = client(info)
    stale = [r for r in child_runs(info) if r.info.status == "RUNNING"]
    for run in stale:
        c.set_terminated(run.info.run_id, status="KILLED")
        c.set_tag(run.info.run_id, "sde.stale", "killed-driver")
    return len(stale)


def merge_duplicate_runs(info: RunInfo) -> int:
    """A resumed trial opens a second run; copy the old run's metric history into the newest and delete the old."""
    c = client(info)
    by_trial: dict[str, list[Any]] = {}
    for run in child_runs(info):
        by_trial.setdefault(run.data.tags.get("trial_name", run.info.run_id), []).append(run)
    merged = 0
    for runs in by_trial.values():
        if len(runs) < 2:
            continue
        runs.sort(key=lambda r: r.info.start_time)
        keep = runs[-1]
        for old in runs[:-1]:
            for key in old.data.metrics:
                have = {m.step for m in c.get_metric_history(keep.info.run_id, key)}
                hist = [Metric(key, m.value, m.timestamp, m.step)
                        for m in c.get_metric_history(old.info.run_id, key) if m.step not in have]
                for i in range(0, len(hist), 500):
                    c.log_batch(keep.info.run_id, metrics=hist[i:i + 500])
            c.delete_run(old.info.run_id)
            merged += 1
    return merged


def backfill(c: MlflowClient, run_id: str, results: Sequence[Mapping[str, Any]]) -> int:
    """Logs the Tune results (``result.json`` rows) a run lacks, by step; returns how many were added.

    A killed driver loses the results its tracking callback had not sent yet; the trial folder still has them.
    """
    have = {m.step for m in c.get_metric_history(run_id, "progress")}
    added = 0
    for result in results:
        step = result.get("timesteps_total") or result.get("training_iteration")
        if not isinstance(step, int) or step in have:
            continue
        now = int(result.get("timestamp", time.time()) * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "config"]
        c.log_batch(run_id, metrics=metrics)
        have.add(step)
        added += 1
    return added


def tag_runs(info: RunInfo, rows: Sequence[TrialRow], winner: TrialRow | None) -> None:
    """Tags each trial run with its design, budget, status and error; marks the winner."""
    c = client(info)
    for run in child_runs(info):
        name = run.data.tags.get("trial_name", "")
        row = next((r for r in rows if name.endswith(r.trial_id)), None)
        if row is None:
            continue
        tags = dict(row.design.to_params())
        tags.update({"budget": row.status, "best": str(row is winner).lower(), "design": row.design.short()})
        if row.status == "stopped":
            tags["stopped_by"] = "asha"
        if row.error:
            tags["error"] = row.error[:250]
        for k, v in tags.items():
            c.set_tag(run.info.run_id, k, v)
        if row.status == "failed" and run.info.status != "FAILED":
            c.set_terminated(run.info.run_id, status="FAILED")


def log_to_parent(info: RunInfo, files: Sequence[Path], metrics: Mapping[str, float],
                  tags: Mapping[str, str] | None = None) -> None:
    """Attaches files (report, plots; folders keep their name), final metrics and tags to the parent run."""
    c = client(info)
    for k, v in (tags or {}).items():
        c.set_tag(info.parent_run_id, k, v[:5000])  # MLflow's limit on a tag value
    for path in files:
        if path.is_dir():
            c.log_artifacts(info.parent_run_id, str(path), artifact_path=path.name)
        elif path.exists():
            c.log_artifact(info.parent_run_id, str(path))
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not math.isnan(v):
            c.log_metric(info.parent_run_id, k, float(v))


def close_parent(info: RunInfo, status: str = "FINISHED", why: str | None = None) -> None:
    """Ends the search's parent run (FINISHED, or FAILED / KILLED with the reason as tag ``sde.interrupted``)."""
    c = client(info)
    if why:
        c.set_tag(info.parent_run_id, "sde.interrupted", why)
    c.set_terminated(info.parent_run_id, status=status, end_time=int(time.time() * 1000))


def log_nested_run(info: RunInfo, name: str, params: Mapping[str, Any], metrics: Mapping[str, float],
                   tags: Mapping[str, str]) -> str:
    """A finished run nested under the search's parent (e.g. one robustness check); returns its id."""
    c = client(info)
    exp = c.get_experiment_by_name(info.experiment)
    run = c.create_run(exp.experiment_id, run_name=name,
                       tags={"mlflow.parentRunId": info.parent_run_id, **tags})
    for k, v in params.items():
        c.log_param(run.info.run_id, k, str(v)[:500])
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not math.isnan(v):
            c.log_metric(run.info.run_id, k, float(v))
    c.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id
