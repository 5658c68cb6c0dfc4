"""MLflow bookkeeping of a search: every call the package makes to MLflow is in this module.

Before the search: the tracking store is checked (:func:`check_tracking`) and the parent run created
(:func:`start_parent`). While Tune runs, :class:`TrialTracker` (a ``MLflowLoggerCallback``) writes each trial's
run under the parent. After it: runs a killed driver left RUNNING are closed, the second run a resumed trial
opens is merged, runs are tagged with their design and budget, the report is attached to the parent run and
the parent closed. This module also decides what a trial run holds: its name (the design), its metrics (the
project's own, under documented names, rounded; see docs/mlflow.md) and their step (the report number).

It reads the run folder (:class:`sde_search.runfolder.RunInfo`) and never the search, the report or a resume.
"""

from __future__ import annotations

import collections
import logging
import math
import numbers
import os
import subprocess
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

TELEMETRY_ENV = "MLFLOW_DISABLE_TELEMETRY"


def telemetry_off(env: MutableMapping[str, str]) -> None:
    """Turns MLflow's usage telemetry off in ``env`` unless the user set the variable (``false`` turns it on).

    MLflow reads the variable when it is imported, so it must be set before the first ``import mlflow``.
    """
    env.setdefault(TELEMETRY_ENV, "true")


telemetry_off(os.environ)  # before the import below: MLflow starts its telemetry client at import time

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from ray.air.integrations.mlflow import MLflowLoggerCallback  # noqa: E402
from ray.tune.utils import flatten_dict  # noqa: E402

from sde_search import preflight  # noqa: E402
from sde_search.analysis import TrialRow  # noqa: E402
from sde_search.config import ConfigError, SpaceConfig, Task  # noqa: E402
from sde_search.design import Design, hparams_of, train_params  # noqa: E402
from sde_search.runfolder import RunInfo  # noqa: E402

log = logging.getLogger(__name__)

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

PLACEMENT = "placement"
"""The result key under which a trial's first report (after each start or restart) says where Ray placed it:
a mapping of strings, ``node_id``, ``node_ip``, ``gpu_ids``, ``cuda_visible_devices``. It becomes the run's
``sde.<key>`` tags (:func:`placement_tags`), never metrics."""

RENAMED = {"step": "optimizer_step"}
"""Result keys logged under another name: MLflow's own ``step`` axis is the report number."""

def use_store(info: RunInfo) -> None:
    """Points this process's MLflow fluent API (and Ray's MLflow callback in it) at the search's tracking store."""
    mlflow.set_tracking_uri(info.tracking_uri)


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

    Tune's bookkeeping (:data:`RAY_KEYS`), the placement (:data:`PLACEMENT`, logged as tags), nested values
    (``config``), strings and booleans are left out.
    """
    return {RENAMED.get(k, k): tidy(float(v)) for k, v in result.items()
            if k not in RAY_KEYS and k != PLACEMENT and isinstance(v, numbers.Real) and not isinstance(v, bool)}


def placement_tags(result: Mapping[str, Any]) -> dict[str, str]:
    """The ``sde.*`` tags of the placement a trial report carries (:data:`PLACEMENT`); empty when it has none.

    Example: ``{"placement": {"node_id": "ab12", "gpu_ids": "1"}}`` -> ``{"sde.node_id": "ab12", "sde.gpu_ids": "1"}``.
    """
    where = result.get(PLACEMENT)
    if not isinstance(where, Mapping):
        return {}
    return {f"sde.{k}": str(v)[:5000] for k, v in where.items()}  # 5000: MLflow's limit on a tag value


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
    searched = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hparams_of(config).items())]
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


# ---------------------------------------------------------------- the trial runs while Tune runs


class TrialTracker(MLflowLoggerCallback):
    """``MLflowLoggerCallback`` naming runs by design, logging in batches and outliving its tracking server.

    A trial's run is named by its design (:func:`run_name`; Ray's would be ``trainable_<id>``), with
    the Tune trial id in the tag ``sde.trial_id`` and Ray's trial name in ``trial_name`` (what a resume matches
    runs on). Its metrics are :func:`trial_metrics` of each report, at step = the report number.

    Ray's callback sends every metric of every report as its own ``log_metric`` call: with the sqlite store
    that is one transaction per key (about 45 per report), and profiling the driver showed it spending 16 s
    of a 4-minute search there, holding up trial starts and competing with trials for the 2 cores. Here a
    report is one ``log_batch`` (same keys, values and steps) and the trial's params another.

    Failed calls queue up and are retried in order: trials never wait for MLflow; while the server is away
    their results stay in Tune's ``result.json`` and in this queue, and the terminal says so once.
    """

    _client: MlflowClient | None = None  # class defaults: a Tuner pickled by an older version has no such field
    _steps: dict[str, set[int]] | None = None  # run id -> steps already logged there
    _fixed: Mapping[str, Any] | None = None  # the space's fixed params, which complete a trial's design

    def __init__(self, *args: Any, fixed: Mapping[str, Any] | None = None, **kwargs: Any):
        """Same arguments as ``MLflowLoggerCallback``, and the space's fixed params (``fixed``)."""
        super().__init__(*args, **kwargs)
        self._fixed = dict(fixed or {})
        self.queue: collections.deque[tuple[Any, tuple]] = collections.deque()
        self.failing = False

    def _call(self, fn: Any, *args: Any) -> None:
        self.queue.append((fn, args))
        while self.queue:
            method, margs = self.queue[0]
            try:
                method(*margs)
            except MlflowException as exc:
                if exc.error_code != "INVALID_PARAMETER_VALUE":
                    self._unreachable(exc)
                    return
                # The store refuses this call and always will (e.g. a param changed on resume): retrying it
                # would hold every later call back, so it is dropped with a warning.
                log.warning("warning: MLflow refused a tracking call (%s); it is skipped", str(exc)[:200])
            except Exception as exc:  # noqa: BLE001 - any other tracking error: keep the call for later
                self._unreachable(exc)
                return
            self.queue.popleft()
        if self.failing:
            log.warning("MLflow reachable again: buffered results sent")
            self.failing = False

    def _unreachable(self, exc: Exception) -> None:
        if not self.failing:
            log.warning("warning: MLflow unreachable (%s); trials go on, their results are kept and sent when it "
                        "is back", type(exc).__name__)
        self.failing = True

    def client(self) -> MlflowClient:
        """One client for the callback's lifetime."""
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def logged_steps(self) -> dict[str, set[int]]:
        """Run id -> the steps already logged there (created on first use: see the class defaults)."""
        if self._steps is None:
            self._steps = {}
        return self._steps

    def _start(self, trial: Any, params: list[Param]) -> None:
        if trial not in self._trial_runs:
            earlier = self._earlier_run(str(trial))
            if earlier is not None:  # a resumed trial keeps the run it had before the driver was killed
                self.client().update_run(earlier, status="RUNNING")
                self._trial_runs[trial] = earlier
                self.logged_steps()[earlier] = {m.step for m in self.client().get_metric_history(earlier, "progress")}
            else:
                tags = {**self.tags, "trial_name": str(trial), "sde.trial_id": trial.trial_id}
                name = run_name(trial.config, self._fixed or {})
                self._trial_runs[trial] = self.mlflow_util.start_run(tags=tags, run_name=name).info.run_id
        self.client().log_batch(self._trial_runs[trial], params=params)

    def _earlier_run(self, name: str) -> str | None:
        exp = self.client().get_experiment_by_name(self.experiment_name)
        if exp is None:
            return None
        runs = self.client().search_runs([exp.experiment_id], f"tags.trial_name = '{name}' and "
                                         f"tags.mlflow.parentRunId = '{self.tags['mlflow.parentRunId']}'",
                                         max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def _result(self, trial: Any, metrics: list[Metric]) -> None:
        run_id = self._trial_runs[trial]
        logged = self.logged_steps().setdefault(run_id, set())
        step = metrics[0].step if metrics else None
        if step in logged:  # a trial resumed from an older checkpoint reports this step again: the first one stays
            return
        self.client().log_batch(run_id, metrics=metrics)
        logged.add(step)

    def log_trial_start(self, trial: Any) -> None:  # noqa: D102
        self._call(self._start, trial, [Param(k, str(v)) for k, v in flatten_dict(trial.config).items()])

    def _placed(self, trial: Any, tags: list[RunTag]) -> None:
        self.client().log_batch(self._trial_runs[trial], tags=tags)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:  # noqa: D102
        step = report_step(result)
        now = int(time.time() * 1000)  # when it was reported, even if it reaches MLflow later
        # Tagged apart from the metrics: a trial restarted on another node reports an already logged step
        # again, whose metrics are skipped, but its new placement must replace the old one.
        tags = [RunTag(k, v) for k, v in placement_tags(result).items()]
        if tags:
            self._call(self._placed, trial, tags)
        self._call(self._result, trial, [Metric(k, v, now, step) for k, v in trial_metrics(result).items()])

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:  # noqa: D102
        self._call(super().log_trial_end, trial, failed)

    def on_experiment_end(self, trials: list, **info: Any) -> None:  # noqa: D102
        if self.queue:
            log.warning("warning: %d tracking calls never reached MLflow (the server stayed away); the run "
                        "folder's trials.json and report.md have every result", len(self.queue))


# ---------------------------------------------------------------- the search's parent run


def git_commit() -> str:
    """The package's git commit, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tracking_uri_for(runs_dir: Path, given: str | None, task: Task) -> str:
    """``--tracking-uri``, else the task's, else an absolute sqlite file in the runs folder.

    Absolute: a relative ``sqlite:///`` URI resolves against each process's working folder (trials run in
    per-trial folders), and without a URI MLflow picks a store by what the current folder holds.
    """
    uri = given or task.config.tracking.uri
    return uri or f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}"


def check_tracking(uri: str) -> None:
    """Fails early, before any training, when MLflow could not open the tracking store or reach its server."""
    problems = preflight.tracking_problems(uri)  # the part --check runs too
    if problems:
        raise ConfigError([f"tracking URI {preflight.cut(uri)}: {p}" for p in problems])
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
    except OSError as exc:
        raise ConfigError([f"--tracking-uri {uri}: MLflow server not reachable ({exc}); start it or use "
                           "the default sqlite store"]) from exc


def start_parent(info_kw: dict[str, Any], task: Task, space: SpaceConfig, artifact_root: Path) -> tuple[str, str]:
    """Creates the experiment and the parent run; returns (experiment id, run id).

    With a local store the experiment's artifacts go to ``artifact_root`` (absolute: trials run in other
    folders). A tracking server (``http(s)://``) chooses their place itself (``mlflow server
    --artifacts-destination``, uploaded over HTTP): the driver's folder may be on a machine that neither the
    server nor the people reading the runs can see.
    """
    client = MlflowClient(info_kw["tracking_uri"])
    exp = client.get_experiment_by_name(info_kw["experiment"])
    kind = {"mlflow.experimentKind": EXPERIMENT_KIND}
    remote = str(info_kw["tracking_uri"]).startswith(("http://", "https://"))
    exp_id = exp.experiment_id if exp else client.create_experiment(
        info_kw["experiment"], artifact_location=None if remote else artifact_root.resolve().as_uri(), tags=kind)
    if exp and "mlflow.experimentKind" not in exp.tags:
        client.set_experiment_tag(exp_id, *next(iter(kind.items())))
    note = (f"sde-search run {info_kw['name']} of task {task.config.name}: one nested run per trial, named by its "
            f"design. score = {task.kind.score_key} on the ID eval set (score_ood: on OOD); step = report number; "
            "optimizer_step = training steps so far. See docs/mlflow.md.")
    run = client.create_run(exp_id, run_name=info_kw["name"], tags={"sde.kind": "search", "sde.task": task.config.name,
                                                                     "mlflow.note.content": note})
    params = {"task": str(task.path), "space": info_kw["space_path"], "git_commit": git_commit(),
              "objective": task.config.objective, "space_size": space.size(),
              "num_samples": space.budget.num_samples, "max_concurrent": space.budget.max_concurrent,
              "sampler": space.sampler.name, "asha": space.asha.enabled, "model": task.config.model.name,
              **train_params(task.config.train.model_dump())}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value)[:500])
    return exp_id, run.info.run_id


def mark_parent(info: RunInfo, status: str, why: str) -> None:
    """Closes the parent run of a search that failed or was killed; a tracking error is only logged."""
    try:
        close_parent(info, status, why)
    except Exception as exc:  # noqa: BLE001 - the original error matters more
        log.warning("warning: could not close MLflow run %s: %s", info.parent_run_id, exc)


# ---------------------------------------------------------------- the report on the parent run


REPORT_FILES = ("report.md", "best_design.yaml", "trials.csv", "trials.json", "verdict.json", "plots")
"""The run folder's files attached to the parent run when the search ends."""


def tracked(what: str, fn: Any, *args: Any) -> Any:
    """Runs one MLflow step; when the store is unreachable, logs so and goes on (the run folder has it all).

    Returns:
        What ``fn`` returned, or None when it failed.
    """
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the local report must still be written
        log.warning("warning: MLflow step failed (%s): %s: %s", what, type(exc).__name__, str(exc)[:200])
        return None


def final_metrics(rows: Sequence[TrialRow], verdict: Mapping[str, Any], *, wall_s: float,
                  ray_init_s: float) -> tuple[dict[str, float], dict[str, str]]:
    """The parent run's final metrics and tags: times, trial counts, the stage's mean scores and its verdict.

    Args:
        rows: The search's trials.
        verdict: ``verdict.json`` (empty when the seed stage did not run).
        wall_s: The search's wall time.
        ray_init_s: Seconds Ray took to start.

    Returns:
        ``(metrics, tags)``: a mean score per role (winner, es_sde, paper_baseline) and measured split.
    """
    final = {"wall_s": wall_s, "ray_init_s": ray_init_s, "reads_input": float(bool(verdict.get("reads_input"))),
             **{f"trials_{s}": float(sum(r.status == s for r in rows)) for s in ("full", "stopped", "failed")}}
    for cand in verdict.get("candidates", []):
        roles = ["winner"] * (cand["short"] == verdict.get("winner")) + [
            r for r in cand["roles"] if r in ("es_sde", "paper_baseline")]
        for role in roles:
            for split in ("eval_id", "test_id", "test_ood"):
                entry = cand["splits"].get(split)
                if entry and entry["measured"]:
                    final[f"{role}_{split}_score_mean"] = entry["score_mean"]
    tags = {"sde.verdict": verdict.get("headline", "no verdict: the seed stage did not run"),
            "sde.reads_input": str(bool(verdict.get("reads_input"))).lower(),
            "sde.winner": str(verdict.get("winner") or "-")}
    return final, tags
