"""The search: Ray Tune + OptunaSearch (TPE) + ASHA, every trial tracked in MLflow.

The only module that talks to Ray and MLflow. A search lives in one run directory
(``runs/<name>/``) holding ``run.json`` (names, URIs, parent run), ``optuna.db`` (the
study), Tune's experiment folder, ``ray.log`` and the final ``report.md`` /
``best_design.yaml``. MLflow gets one parent run per search and one nested run per
trial (``MLflowLoggerCallback`` tagged with ``mlflow.parentRunId``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sde_search import preflight
from sde_search.config import OBJECTIVE_METRIC, ConfigError, SpaceConfig, Task, report_range
from sde_search.design import PRESETS, Design

# Before Ray is imported, since Ray reads them once: keep every listener on 127.0.0.1 and skip token auth.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a dead server costs seconds, not minutes
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# MLflow's usage telemetry stays off unless the user set the variable; read when mlflow is imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import optuna  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
import ray  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from ray import tune  # noqa: E402
from ray.air.integrations.mlflow import MLflowLoggerCallback  # noqa: E402
from ray.tune.logger import JsonLoggerCallback  # noqa: E402
from ray.tune.schedulers import FIFOScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402
from ray.tune.utils import flatten_dict  # noqa: E402

from sde_search import report as reporting  # noqa: E402
from sde_search import resume, tracking  # noqa: E402
from sde_search.pruner import EvidenceASHA  # noqa: E402
from sde_search.sampler import DistinctSampler, optuna_space  # noqa: E402

WORKER_ENV = ("SDE_FAULT", "SDE_FAULT_MARK", "SDE_CACHE", "PYTHONPATH", "HF_HUB_OFFLINE", tracking.TELEMETRY_ENV)


@dataclass(frozen=True)
class RunInfo:
    """What ``run.json`` records about a search, so that it can be resumed and reported."""

    name: str
    run_dir: str
    task_path: str
    space_path: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    study_name: str
    overrides: tuple[str, ...] = ()

    def save(self) -> None:
        """Writes ``run.json`` (atomically: a kill leaves the old or the new file)."""
        data = {**self.__dict__, "overrides": list(self.overrides)}
        resume.write_atomic(Path(self.run_dir, "run.json"), json.dumps(data, indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> RunInfo:
        """Reads ``run.json`` of a run directory (raises ConfigError naming it when it is cut short or mistyped).

        Every field must be there with its type (``overrides`` may be absent); keys of other versions are ignored.
        """
        import dataclasses

        from sde_search.analysis import read_run_info

        kinds = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "tuple[str, ...]": "list"}
        optional = {f.name for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
        fields = {f.name: kinds.get(str(f.type), "string|integer|number|boolean|list|mapping|null")
                  + ("?" if f.name in optional else "") for f in dataclasses.fields(cls)}
        data = read_run_info(run_dir, fields)
        return cls(**{**{k: v for k, v in data.items() if k in fields}, "overrides": tuple(data.get("overrides", ()))})


# ---------------------------------------------------------------- space


def baseline_points(space: SpaceConfig, searched: Mapping[str, Any], task: Task,
                    warm: Sequence[Design] = ()) -> list[dict[str, Any]]:
    """``points_to_evaluate``: the paper's baseline and ES-SDE (``baselines:``), then warm-start designs.

    Designs outside the space are left out; searched training values take the task's value (or the range's
    low end when it falls outside).
    """
    points: list[dict[str, Any]] = []
    fixed = optuna_space(space)[1]
    for design in [PRESETS[name] for name in space.baselines] + list(warm):
        params = design.to_params()
        point = {k: v for k, v in params.items() if k in searched}
        if all(v in searched[k].choices for k, v in point.items()) and point not in points and \
                all(params[k] == v for k, v in fixed.items() if k in params):
            for key, dist in searched.items():
                if key.startswith("train."):
                    default = getattr(task.config.train, key[6:])
                    point[key] = default if _fits(dist, default) else _midpoint(dist)
            points.append(point)
    return points


def warm_designs(runs_dir: Path, runs: Sequence[str], top: int = 3) -> list[Design]:
    """The best ``top`` distinct full-budget designs of each earlier search (``--warm-start``)."""
    from sde_search.analysis import full_budget, load_rows, read_summary

    designs: list[Design] = []
    for run in runs:
        folder = next((p for p in (runs_dir / run, Path(run)) if (p / "trials.json").is_file()), None)
        if folder is None:
            raise ConfigError([f"--warm-start {run}: no finished search there (no trials.json in "
                               f"{runs_dir / run} or {run})"])
        if not (folder / "summary.json").is_file():
            raise ConfigError([f"--warm-start {run}: {folder / 'summary.json'}: missing, so the run's metric and "
                               f"winner are unknown; run `sde-search report {run}` first (it rebuilds summary.json)"])
        summary = read_summary(folder / "summary.json")
        ranked = full_budget(load_rows(folder / "trials.json"), summary["metric"])
        ranked.sort(key=lambda r: r.trial_id != summary.get("winner"))  # the run's winner first, then by score
        best = [r.design for r in ranked]
        designs += [d for d in dict.fromkeys(best) if d not in designs][:top]
    return designs


def _fits(dist: Any, value: Any) -> bool:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return value in dist.choices
    return dist.low <= value <= dist.high


def _midpoint(dist: Any) -> Any:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return dist.choices[0]
    return dist.low


def make_sampler(space: SpaceConfig, searched: Mapping[str, Any]) -> optuna.samplers.BaseSampler:
    """TPE (seeded, multivariate, constant liar), random or brute force; wrapped to keep designs distinct."""
    s = space.sampler
    if s.name == "brute_force":
        return optuna.samplers.BruteForceSampler(seed=s.seed)  # distinct by construction
    if s.name == "random":
        base: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=s.seed)
    else:
        base = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials,
                                          multivariate=s.multivariate, constant_liar=True)
    return DistinctSampler(base, searched, seed=s.seed) if s.distinct else base


# ---------------------------------------------------------------- trainable


def trainable(config: dict[str, Any], task: Task, fixed: dict[str, Any], threads: int, metric: str,
              heartbeats: str | None = None) -> None:
    """One Tune trial: fit() with Tune reporting and checkpoints (heavy imports happen here).

    ``heartbeats``: a folder where the trial's progress lines go (:class:`HeartbeatFile`), for the driver to show.
    """
    from ray.tune import Checkpoint

    from sde_search import train

    _freeze_imports()

    params = {**fixed, **config}
    design = Design.from_params(params)
    hparams = {k[len("train."):]: v for k, v in params.items() if k.startswith("train.")}
    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_from = checkpoint.to_directory(tempfile.mkdtemp(prefix="sde-resume-"))
    workdir = tempfile.mkdtemp(prefix="sde-ckpt-")

    def report(metrics: dict[str, float], path: str | None) -> None:
        # asha_score: the metric a search started by an earlier version ranks on; its pickled scheduler
        # needs it in every result when such a search is resumed.
        metrics = {**metrics, "asha_score": metrics[metric]}
        tune.report(metrics, checkpoint=Checkpoint.from_directory(path) if path else None)

    with HeartbeatFile.installed(heartbeats, tune.get_context().get_trial_id()):
        train.fit(task, design, hparams, report=report, checkpoint_dir=workdir, resume_from=resume_from,
                  threads=threads)


def _freeze_imports() -> None:
    """Hides the import-time objects of a worker (torch, transformers, peft: about 400k) from the collector.

    Done once per worker process; the ``gc.collect()`` that ends each trial then takes 1 ms instead of 0.2 s.
    """
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()


# ---------------------------------------------------------------- progress


HEARTBEATS = "heartbeats"
"""The run folder's folder of trial heartbeats, one ``<trial id>.json`` per trial (the latest line only)."""


class HeartbeatFile(logging.Handler):
    """Writes the heartbeat a trial logs (``record.heartbeat``, see :class:`sde_search.steps.Heartbeat`) to a file.

    Trials run in Ray workers whose output does not reach the terminal, so the worker writes each heartbeat
    to the run folder (atomically) and the driver's :class:`Progress` shows the ones it has not shown yet.
    """

    def __init__(self, path: Path):
        """Writes to ``path``; removes a heartbeat an earlier run of the same trial left there."""
        super().__init__(logging.INFO)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
        beat = getattr(record, "heartbeat", None)
        if beat is None:
            return
        with contextlib.suppress(OSError):  # a full disk must not fail the trial; the driver shows no heartbeat
            resume.write_atomic(self.path, json.dumps(beat))

    @classmethod
    @contextlib.contextmanager
    def installed(cls, folder: str | None, trial_id: str) -> Iterator[None]:
        """Inside: the package's progress logs of this trial go to ``folder/<trial_id>.json`` (no folder: nowhere)."""
        if folder is None:
            yield
            return
        logger = logging.getLogger("sde_search")
        handler, level = cls(Path(folder) / f"{trial_id}.json"), logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)  # a worker's loggers default to WARNING, which drops the heartbeat
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)


class Progress(tune.Callback):
    """Prints trial events, trial heartbeats and a status line; Ray's own output goes to ``ray.log``."""

    POLL_S = 2.0  # how often the heartbeat files are read (the driver loop calls on_step_end about every 0.1 s)
    # class defaults: a search resumed from a Tuner pickled by an older version restores a Progress without them
    heartbeats: Path | None = None
    polled = 0.0
    beats: dict[str, float] | None = None  # trial id -> time of the heartbeat last shown

    def __init__(self, total: int, metric: str, heartbeats: Path | None = None,
                 fixed: Mapping[str, Any] | None = None):
        """Sets the trial count, the metric shown, the heartbeat folder and the space's fixed params.

        The fixed params complete a trial's design in its start line (the trial's config holds only searched ones).
        """
        self.total, self.metric, self.t0 = total, metric, time.time()
        self.fixed = dict(fixed or {})
        self.done = self.stopped = self.failed = 0
        self.best: tuple[float, str] | None = None
        self.running: set[str] = set()
        self.last: dict[str, dict[str, Any]] = {}
        self.heartbeats, self.beats = heartbeats, {}

    def _line(self, text: str) -> None:
        elapsed = time.time() - self.t0
        finished = self.done + self.failed
        eta = "" if not finished else f", ETA {elapsed / finished * (self.total - finished) / 60:.1f} min"
        best = f"best {self.best[0]:.3f} ({self.best[1]})" if self.best else "best -"
        print(f"[{elapsed / 60:5.1f} min] {text:<58} | {finished}/{self.total} done ({self.stopped} stopped early, "
              f"{self.failed} failed), {len(self.running)} running, {best}{eta}", flush=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:  # noqa: D102
        now = time.time()
        if self.heartbeats is None or now - self.polled < self.POLL_S:
            return
        self.polled = now
        self.beats = self.beats if self.beats is not None else {}
        for trial_id in sorted(self.running):
            try:
                beat = json.loads((self.heartbeats / f"{trial_id}.json").read_text())
                if beat["time"] == self.beats.get(trial_id):
                    continue
                line = heartbeat_line(trial_id, beat)
            except (OSError, ValueError, KeyError, TypeError):  # none yet, or not one this version wrote
                continue
            self.beats[trial_id] = beat["time"]
            self._line(line)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:  # noqa: D102
        self.running.add(trial.trial_id)
        self._line(f"start {trial.trial_id}: {Design.from_params({**self.fixed, **trial.config}).short()}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:  # noqa: D102
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:  # noqa: D102
        self.running.discard(trial.trial_id)
        # a trial restored by --resume may finish without reporting in this process: Tune's own last result then
        result = self.last.get(trial.trial_id) or getattr(trial, "last_result", None) or {}
        value, progress = result.get(self.metric, float("nan")), result.get("progress", 0.0)
        self.done += 1
        if progress < 1:
            self.stopped += 1
            self._line(f"stop  {trial.trial_id}: {self.metric} {value:.3f} at {progress:.0%} (ASHA)")
            return
        if self.best is None or value > self.best[0]:
            self.best = (value, trial.trial_id)
        self._line(f"done  {trial.trial_id}: {self.metric} {value:.3f}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:  # noqa: D102
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._line(f"FAIL  {trial.trial_id}: see {trial.error_file or 'ray.log'}")


def heartbeat_line(trial_id: str, beat: Mapping[str, Any]) -> str:
    """A heartbeat as a progress line: ``beat  <id>: step 40/120, loss 1.234, 2.10 s/step``."""
    return (f"beat  {trial_id}: step {int(beat['step'])}/{int(beat['total'])}, loss {float(beat['loss']):.3f}, "
            f"{float(beat['s_per_step']):.2f} s/step")


class FullBudgetOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna an ASHA-stopped trial was PRUNED, not COMPLETE with a partial score.

    Ray's OptunaSearch marks PRUNED only when no value came back, so TPE would otherwise rank a design stopped
    at 2 of 12 reports as if that early score were final. Pruned trials keep their reported intermediate
    values, which TPE uses to rank them among the poor ones.
    """

    def suggest(self, trial_id: str) -> dict | None:
        """Optuna's next design; first, an Optuna trial a killed search had started but Tune never recorded.

        Handing such a trial on keeps the study's trials and Tune's one to one after a resume (a running one
        first; a finished one is trained again, and the study keeps its result). Each Optuna trial is tagged
        with its Tune trial id, which is how a resume matches the two.
        """
        if trial_id not in self._ot_trials and not callable(self._space):
            mine = {t.number for t in self._ot_trials.values()}
            orphans = [t for t in self._ot_study.get_trials(deepcopy=False)
                       if t.number not in mine and t.state != optuna.trial.TrialState.WAITING]
            orphans.sort(key=lambda t: (t.state != optuna.trial.TrialState.RUNNING, t.number))
            if orphans:
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, orphans[0]._trial_id)
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            try:
                ot_trial.set_user_attr(resume.TUNE_TRIAL_ATTR, trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:  # an adopted finished trial: noted on the study
                self._ot_study.set_user_attr(f"{resume.TUNE_TRIAL_ATTR}:{ot_trial.number}", trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:  # noqa: D102
        with warnings.catch_warnings(), contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            # a trial resumed from a checkpoint reports its later steps again (Optuna keeps the first), and one
            # the study already closed reports nothing more
            warnings.filterwarnings("ignore", message="The reported value is ignored", category=UserWarning)
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:  # noqa: D102
        stopped = result is not None and not error and result.get("progress", 1.0) < 1.0
        if trial_id in self._ot_trials and self._ot_study._storage.get_trial(
                self._ot_trials[trial_id]._trial_id).state.is_finished():  # adopted after a resume: already told
            self._completed_trials.add(trial_id)
            return
        if not stopped or trial_id in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        # Tune does not pass the result that ASHA stopped a trial on to the searcher: report it here, so the
        # pruned trial's last intermediate value is the one it was judged on, not the report before it.
        self.on_trial_result(trial_id, result)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 - as Ray does: a bookkeeping error must not stop the search
            logging.getLogger(__name__).warning("optuna: %s", exc)
        self._completed_trials.add(trial_id)


class TrialTracker(MLflowLoggerCallback):
    """``MLflowLoggerCallback`` naming runs by design, logging in batches and outliving its tracking server.

    A trial's run is named by its design (:func:`tracking.run_name`; Ray's would be ``trainable_<id>``), with
    the Tune trial id in the tag ``sde.trial_id`` and Ray's trial name in ``trial_name`` (what a resume matches
    runs on). Its metrics are :func:`tracking.trial_metrics` of each report, at step = the report number.

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
                print(f"warning: MLflow refused a tracking call ({str(exc)[:200]}); it is skipped", file=sys.stderr,
                      flush=True)
            except Exception as exc:  # noqa: BLE001 - any other tracking error: keep the call for later
                self._unreachable(exc)
                return
            self.queue.popleft()
        if self.failing:
            print("MLflow reachable again: buffered results sent", file=sys.stderr, flush=True)
            self.failing = False

    def _unreachable(self, exc: Exception) -> None:
        if not self.failing:
            print(f"warning: MLflow unreachable ({type(exc).__name__}); trials go on, their results are "
                  "kept and sent when it is back", file=sys.stderr, flush=True)
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
                name = tracking.run_name(trial.config, self._fixed or {})
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

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:  # noqa: D102
        step = tracking.report_step(result)
        now = int(time.time() * 1000)  # when it was reported, even if it reaches MLflow later
        self._call(self._result, trial, [Metric(k, v, now, step) for k, v in tracking.trial_metrics(result).items()])

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:  # noqa: D102
        self._call(super().log_trial_end, trial, failed)

    def on_experiment_end(self, trials: list, **info: Any) -> None:  # noqa: D102
        if self.queue:
            print(f"warning: {len(self.queue)} tracking calls never reached MLflow (the server stayed away); "
                  "the run folder's trials.json and report.md have every result", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- run set-up


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
    """Creates the experiment (absolute artifact root) and the parent run; returns (experiment id, run id)."""
    client = MlflowClient(info_kw["tracking_uri"])
    exp = client.get_experiment_by_name(info_kw["experiment"])
    kind = {"mlflow.experimentKind": tracking.EXPERIMENT_KIND}
    exp_id = exp.experiment_id if exp else client.create_experiment(
        info_kw["experiment"], artifact_location=artifact_root.resolve().as_uri(), tags=kind)
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
              **{f"train.{k}": v for k, v in task.config.train.model_dump().items()}}
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value)[:500])
    return exp_id, run.info.run_id


def _start_ray(address: str | None, space: SpaceConfig) -> float:
    """Starts (or joins) Ray and checks the per-trial resources; returns the seconds it took."""
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    src = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    _ray_log_to(logging.NullHandler())
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR", "include_dashboard": False,
                              "configure_logging": False}
    t0 = time.time()
    if address:  # a cluster's workers were started elsewhere: the variables travel in the runtime env
        ray.init(address=address, runtime_env={"env_vars": env}, **kwargs)
    else:
        # A local instance's workers inherit this process's environment; a runtime env would instead make
        # Ray start a fresh worker per trial slot (0.9 s measured) rather than use its pre-started ones.
        os.environ.update(env)
        # address="local": always a new instance, never a stale cluster found through /tmp/ray.
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(space.resources.cpu)),
                 num_gpus=None if space.resources.gpu else 0, **kwargs)
    seconds = time.time() - t0
    try:
        _validate_resources(space)
    except ConfigError:
        ray.shutdown()
        raise
    where = f"joined the Ray cluster at {address}" if address else "started Ray on 127.0.0.1"
    total = ray.cluster_resources()
    print(f"{where} in {seconds:.1f} s ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs)", flush=True)
    return seconds


def _ray_log_to(handler: logging.Handler) -> None:
    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.propagate = False


def _validate_resources(space: SpaceConfig) -> None:
    total = ray.cluster_resources()
    for key, need in (("CPU", space.resources.cpu), ("GPU", space.resources.gpu)):
        if need and total.get(key, 0) < need:
            raise ConfigError([f"resources.{key.lower()}: {need} per trial, but the Ray cluster has "
                               f"{total.get(key, 0):g} {key}s"])


# ---------------------------------------------------------------- the command


def run_search(task: Task, space: SpaceConfig, space_path: Path, args: argparse.Namespace) -> int:
    """``sde-search --task T.yaml``: runs (or resumes) a search and prints the report.

    Nothing is created (run folder, MLflow run) before the names, the tracking store and the Ray
    resources have been checked, so a mistake leaves nothing behind.
    """
    runs_dir = Path(args.runs_dir).resolve()
    check_runs_dir(runs_dir)
    info: RunInfo | None = None
    if args.resume:
        run_dir = _find_run(runs_dir, args.resume, task)
        info = RunInfo.load(run_dir)
    else:
        name = args.name or f"{task.config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        check_run_name(name)
        run_dir = runs_dir / name
        if run_dir.exists():
            raise ConfigError([f"--name {name}: {run_dir} exists; pick another name or --resume {name}"])
        uri = tracking_uri_for(runs_dir, args.tracking_uri, task)
        if args.tracking_uri or task.config.tracking.uri:  # the default store's folder is made with the run
            check_tracking(uri)
        info_kw = {"name": name, "run_dir": str(run_dir), "task_path": str(task.path), "space_path": str(space_path),
                   "tracking_uri": uri, "experiment": task.config.tracking.experiment or task.config.name,
                   "study_name": study_name(task.config.name, name), "overrides": tuple(args.overrides)}
    warm = warm_designs(runs_dir, args.warm_start) if getattr(args, "warm_start", None) else []
    if warm:
        print("warm start: " + ", ".join(d.short() for d in warm), flush=True)
    if info is not None:
        _stop_leftover_ray(run_dir)
    ray_init_s = _start_ray(args.address, space)
    try:
        if info is None:
            # run.json first, so that a kill at any later moment leaves a folder that --resume can open
            run_dir.mkdir(parents=True)
            info = RunInfo(parent_run_id="", **info_kw)
            info.save()
        if not info.parent_run_id:  # a new search, or one killed before its MLflow run existed
            _, parent = start_parent(info.__dict__, task, space, runs_dir / "mlartifacts")
            info = RunInfo(**{**info.__dict__, "parent_run_id": parent})
            info.save()
        else:
            tracking.client(info).update_run(info.parent_run_id, status="RUNNING")
        _ray_log_to(logging.FileHandler(run_dir / "ray.log"))
        if not args.address:
            _record_ray_processes(run_dir)
        return execute(task, space, info, ray_init_s=ray_init_s, warm=warm)
    except BaseException as exc:  # the parent run must not stay RUNNING; --resume reopens it
        if info is not None and info.parent_run_id:
            _mark_parent(info, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", repr(exc)[:250])
        if not args.resume and not isinstance(exc, KeyboardInterrupt) and not _trained_anything(run_dir):
            _remove_new_run(run_dir, info)
        raise
    finally:
        ray.shutdown()


MAX_RUN_NAME = 120  # Tune's trial folders add about 130 characters under it; most file systems allow 255


def check_run_name(name: str) -> None:
    """Refuses a run name that is not a plain, short folder name (raises ConfigError)."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*", name) or name in (".", ".."):
        raise ConfigError([f"--name {name[:200]!r}: a run name is letters, digits, '_', '.' and '-' (not first)"])
    if len(name) > MAX_RUN_NAME:
        raise ConfigError([f"--name {name[:60]}...: {len(name)} characters; at most {MAX_RUN_NAME} (pick a shorter "
                           "--name, or a shorter task name)"])


def study_name(task_name: str, run_name: str) -> str:
    """The Optuna study's name: ``sde-<run>``, with the task in front when the run name does not start with it."""
    return f"sde-{run_name}" if run_name.startswith(task_name) else f"sde-{task_name}-{run_name}"


def check_runs_dir(runs_dir: Path) -> None:
    """Refuses a runs folder that is a file, lies under a file or cannot be written (raises ConfigError)."""
    existing = runs_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError([f"--runs-dir {runs_dir}: {existing} is a file, not a folder"])
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError([f"--runs-dir {runs_dir}: {existing} is not writable"])


def _trained_anything(run_dir: Path) -> bool:
    # The result log, not Tune's result.json: Tune copies that into the run folder only with each state snapshot.
    return any((run_dir / "results").glob("*.jsonl"))


def _remove_new_run(run_dir: Path, info: RunInfo | None) -> None:
    """Removes what a new search created when it failed before any trial reported (folder, MLflow run)."""
    import shutil

    if info is not None and info.parent_run_id:
        with contextlib.suppress(Exception):
            tracking.client(info).delete_run(info.parent_run_id)
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"the search failed before any trial reported; removed {run_dir} and its MLflow run", file=sys.stderr,
          flush=True)


def _record_ray_processes(run_dir: Path) -> None:
    """Writes the PIDs of the Ray processes this driver started, for a later --resume to stop.

    A SIGKILLed driver leaves Ray's gcs_server and raylet running; nothing else knows their PIDs.
    """
    import psutil

    procs = [{"pid": p.pid, "created": p.create_time(), "name": p.name()}
             for p in psutil.Process().children(recursive=True)]
    (run_dir / "ray_processes.json").write_text(json.dumps(procs, indent=1))


def _stop_leftover_ray(run_dir: Path) -> int:
    """Kills the Ray processes a SIGKILLed driver of this run left (by recorded PID and start time only)."""
    import psutil

    path = run_dir / "ray_processes.json"
    if not path.exists():
        return 0
    alive = []
    for entry in json.loads(path.read_text()):
        try:
            proc = psutil.Process(entry["pid"])
            if abs(proc.create_time() - entry["created"]) < 0.01:  # the same process, not a reused PID
                alive += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
    if alive:
        print(f"stopped {len(alive)} Ray processes left by the interrupted driver", flush=True)
    path.unlink()
    return len(alive)


def _mark_parent(info: RunInfo, status: str, why: str) -> None:
    try:
        tracking.close_parent(info, status, why)
    except Exception as exc:  # noqa: BLE001 - the original error matters more
        print(f"warning: could not close MLflow run {info.parent_run_id}: {exc}", file=sys.stderr)


def _find_run(runs_dir: Path, which: str, task: Task) -> Path:
    if which != "latest":
        path = runs_dir / which
        if not (path / "run.json").exists():
            raise ConfigError([f"--resume {which}: no run at {path}"])
        return path
    candidates = sorted((p for p in runs_dir.glob(f"{task.config.name}-*") if (p / "run.json").exists()),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError([f"--resume: no earlier run of task {task.config.name} under {runs_dir}"])
    return candidates[-1]


def execute(task: Task, space: SpaceConfig, info: RunInfo, *, ray_init_s: float, warm: Sequence[Design] = ()) -> int:
    """Builds Tuner (or restores it) on the running Ray, runs it and reports; returns the exit code."""
    run_dir = Path(info.run_dir)
    mlflow.set_tracking_uri(info.tracking_uri)
    searched, fixed = optuna_space(space)
    metric = OBJECTIVE_METRIC[task.config.objective]
    max_t = report_range(task, space)[1]  # ASHA's horizon: the longest trial the space allows
    if task.config.model.name == "tiny":
        from sde_search.train import build_tiny_tokenizer

        build_tiny_tokenizer(task)  # once on the driver; trials load it from the cache
    gpu = space.resources.gpu > 0
    reuse = (not gpu) if space.reuse_actors == "auto" else space.reuse_actors
    threads = max(1, int(space.resources.cpu))
    fn = tune.with_resources(tune.with_parameters(trainable, task=task, fixed=fixed, threads=threads,
                                                  metric=metric, heartbeats=str(run_dir / HEARTBEATS)),
                             {"cpu": space.resources.cpu, "gpu": space.resources.gpu})
    callbacks = [JsonLoggerCallback(),  # result.json per trial: the report's histories (other loggers stay off)
                 TrialTracker(tracking_uri=info.tracking_uri, experiment_name=info.experiment, fixed=fixed,
                              tags={"mlflow.parentRunId": info.parent_run_id, "sde.kind": "trial"}),
                 Progress(space.budget.num_samples, metric, run_dir / HEARTBEATS, fixed)]
    callbacks += [resume.ResultLog(run_dir), resume.StateKeeper(run_dir)]
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", resume.SNAPSHOT_PERIOD_S)  # read when the Tuner starts
    experiment_dir = run_dir / "tune"
    t0 = time.time()
    try:
        repair = None
        if experiment_dir.exists():
            repair = resume.prepare(info, ["score", "score_ood"] if task.config.objective == "pareto" else metric)
            for line in repair.lines():
                print(line, flush=True)
        if repair is not None and not repair.fresh:
            tracking.close_stale_runs(info)
            tuner = tune.Tuner.restore(str(experiment_dir), trainable=fn, resume_unfinished=True,
                                       restart_errored=True)
            print(f"resuming {info.name} from {experiment_dir}", flush=True)
        else:
            tuner = _new_tuner(fn, space, task, info, searched, metric, max_t, reuse, callbacks, run_dir, warm)
        print(f"search {info.name}: {space.size()} designs, {space.budget.num_samples} trials, "
              f"{space.budget.max_concurrent} at once; objective {metric}; ASHA "
              f"{'on' if space.asha.enabled else 'off'} (max_t {max_t}); MLflow {info.tracking_uri}", flush=True)
        results = tuner.fit()
    finally:
        ray.shutdown()
    finished = results.num_terminated + results.num_errors
    if finished < space.budget.num_samples:  # Ctrl-C: Tune saved its state and returned early
        print(f"\ninterrupted after {finished} of {space.budget.num_samples} trials; everything is saved. "
              f"Continue with: sde-search --task {task.path} --resume {info.name}"
              + (f" --runs-dir {run_dir.parent}" if run_dir.parent.name != "runs" else ""), flush=True)
        raise KeyboardInterrupt
    wall = time.time() - t0 + ray_init_s
    return reporting.finish(task, space, info, results, metric=metric, wall_s=wall, ray_init_s=ray_init_s)


def _new_tuner(fn: Any, space: SpaceConfig, task: Task, info: RunInfo, searched: dict[str, Any], metric: str,
               max_t: int, reuse: bool, callbacks: list, run_dir: Path, warm: Sequence[Design]) -> tune.Tuner:
    storage = optuna.storages.RDBStorage(f"sqlite:///{run_dir / 'optuna.db'}")
    pareto = task.config.objective == "pareto"
    search_alg = FullBudgetOptunaSearch(space=searched, metric=["score", "score_ood"] if pareto else metric,
                              mode=["max", "max"] if pareto else "max",
                              points_to_evaluate=baseline_points(space, searched, task, warm) or None,
                              sampler=make_sampler(space, searched), study_name=info.study_name, storage=storage)
    if space.asha.enabled:
        scheduler: Any = EvidenceASHA(time_attr="report", metric=metric, mode="max", max_t=max_t,
                                      grace_period=space.asha.grace_period,
                                      reduction_factor=space.asha.reduction_factor,
                                      defer_until=space.asha.defer_until, margin=space.asha.margin,
                                      rung_value=space.asha.rung_value,
                                      evidence_keys={"score_ood": ("measured_ood",),
                                                     "score_mean": ("measured", "measured_ood")}.get(
                                          metric, ("measured",)))
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler,
                                    num_samples=space.budget.num_samples,
                                    max_concurrent_trials=space.budget.max_concurrent, reuse_actors=reuse),
        run_config=tune.RunConfig(name="tune", storage_path=str(run_dir), callbacks=callbacks, verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                                  failure_config=tune.FailureConfig(max_failures=space.budget.max_failures)),
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: sde-search --task T.yaml")
