"""MLflow bookkeeping of a search: the trial runs under the parent, their tags, artifacts and repairs.

``MLflowLoggerCallback`` writes each trial's metrics while Tune runs; this module does what it
cannot: close runs a killed driver left RUNNING, merge the second run a resumed trial opens,
tag runs with their design and budget, attach the report to the parent run. It also decides what
a trial run holds: its name (the design), its metrics (the project's own, under documented names,
rounded; see docs/mlflow.md) and their step (the report number).
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

TELEMETRY_ENV = "MLFLOW_DISABLE_TELEMETRY"


def telemetry_off(env: MutableMapping[str, str]) -> None:
    """Turns MLflow's usage telemetry off in ``env`` unless the user set the variable (``false`` turns it on).

    MLflow reads the variable when it is imported, so it must be set before the first ``import mlflow``.
    """
    env.setdefault(TELEMETRY_ENV, "true")


telemetry_off(os.environ)  # before the import below: MLflow starts its telemetry client at import time

from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from sde_search.analysis import TrialRow  # noqa: E402
from sde_search.design import Design  # noqa: E402

EXPERIMENT_KIND = "custom_model_development"
"""The ``mlflow.experimentKind`` tag of an experiment a search creates: MLflow's UI then opens it on its runs
table, not on the GenAI overview (which shows "No data" for training runs)."""

RAY_KEYS = frozenset({
    "training_iteration", "time_total_s", "episodes_total", "timesteps_total", "node_ip", "hostname", "pid",
    "time_this_iter_s", "timestamp", "date", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "config", "checkpoint_dir_name", "done", "should_checkpoint", "trial_id",
    "experiment_tag", "episodes_this_iter", "timesteps_this_iter",
    "asha_score",  # a copy of the searched metric that searches of older versions rank on
})
"""Keys Tune (or the search wiring) adds to every trial result; they describe Tune's bookkeeping, not the trial,
and are kept out of MLflow."""

RENAMED = {"step": "optimizer_step"}
"""Result keys logged under another name: MLflow's own ``step`` axis is the report number."""

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


def trial_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of one trial report as MLflow gets them: the project's numeric keys, renamed and rounded.

    Tune's bookkeeping (:data:`RAY_KEYS`), nested values (``config``), strings and booleans are left out.
    """
    return {RENAMED.get(k, k): tidy(float(v)) for k, v in result.items()
            if k not in RAY_KEYS and isinstance(v, numbers.Real) and not isinstance(v, bool)}


def tidy(value: float) -> float:
    """Rounds to 6 significant digits and to 1e-9, so that float noise (a kappa of 4.5e-16) shows as 0.

    Whole numbers (token counts), NaN and infinities pass through.
    """
    if not math.isfinite(value) or value.is_integer():  # counts (tokens, steps) stay exact
        return value + 0.0
    return round(float(f"{value:.6g}"), 9) + 0.0  # + 0.0: no "-0"


def report_step(result: Mapping[str, Any]) -> int | None:
    """MLflow's step for a trial report: the report number (1, 2, ...), from the trial's own count.

    The trial counts reports from its checkpoint, so a resumed trial goes on where it stopped; Tune's
    ``training_iteration`` is the fallback for results without ``report``.
    """
    for key in ("report", "training_iteration"):
        value = result.get(key)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            return int(value)
    return None


def run_name(config: Mapping[str, Any], fixed: Mapping[str, Any]) -> str:
    """A trial run's name: its design (``first/exclude/lines/placeholder/text/none``) and searched training values.

    Args:
        config: The trial's searched params (Tune's ``trial.config``).
        fixed: The space's fixed params, which complete the design.
    """
    design = Design.from_params({**fixed, **config})
    searched = [f"{k.removeprefix('train.')}={v:.3g}" if isinstance(v, float) else f"{k.removeprefix('train.')}={v}"
                for k, v in sorted(config.items()) if k.startswith("train.")]
    return " ".join([design.short(), *searched])


def backfill(c: MlflowClient, run_id: str, results: Sequence[Mapping[str, Any]]) -> int:
    """Logs the Tune results (``result.json`` rows) a run lacks, by step; returns how many were added.

    A killed driver loses the results its tracking callback had not sent yet; the trial folder still has them.
    They are logged as the callback logs them (:func:`trial_metrics`, step :func:`report_step`).
    """
    have = {m.step for m in c.get_metric_history(run_id, "progress")}
    added = 0
    for result in results:
        step = report_step(result)
        if step is None or step in have:
            continue
        now = int(result.get("timestamp", time.time()) * 1000)
        metrics = [Metric(k, v, now, step) for k, v in trial_metrics(result).items()]
        c.log_batch(run_id, metrics=metrics)
        have.add(step)
        added += 1
    return added


def experiments(uri: str) -> list[tuple[str, str]]:
    """The (id, name) of each active experiment in a tracking store that holds runs (all of them if none does)."""
    c = MlflowClient(uri)
    found = [(e.experiment_id, e.name) for e in c.search_experiments()]
    used = [(i, n) for i, n in found if c.search_runs([i], max_results=1)]
    return sorted(used or found, key=lambda e: int(e[0]) if e[0].isdigit() else e[0])


def runs_view_url(base: str, experiment_id: str) -> str:
    """The address of an experiment's runs table in MLflow's UI (3.x opens on its GenAI overview without it)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


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
