"""The search: Ray Tune + OptunaSearch (TPE) + ASHA, every trial tracked in MLflow.

A search lives in one run directory (``runs/<name>/``) holding ``run.json`` (names, URIs, parent run),
``optuna.db`` (the study), Tune's experiment folder, ``ray.log`` and the final ``report.md`` /
``best_design.yaml``. MLflow gets one parent run per search and one nested run per trial (a
``MLflowLoggerCallback`` tagged with ``mlflow.parentRunId``). This module wires the pieces together: the run
folder and its checks, the trainable that runs one trial in a Ray worker, and the Tuner; the sampler, the
searcher, the pruner, the progress lines and Ray itself have modules of their own. It logs what the user sees.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from sde_search.config import OBJECTIVE_METRIC, ConfigError, SpaceConfig, Task, load_task_and_space, report_range
from sde_search.design import Design, split_params

# Before Ray is imported, since Ray reads them once: keep every listener on 127.0.0.1 and skip token auth.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a dead server costs seconds, not minutes
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# MLflow's usage telemetry stays off unless the user set the variable; read when mlflow is imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import optuna  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.logger import JsonLoggerCallback  # noqa: E402
from ray.tune.schedulers import FIFOScheduler  # noqa: E402

# Progress, FullBudgetOptunaSearch and TrialTracker are imported by name: the Tune state of a search started
# before they moved out of this module names them ``sde_search.search.<name>``, and --resume unpickles it.
from sde_search import console, preflight, raynodes, resume, runfolder, stages, storage, tracking  # noqa: E402
from sde_search.progress import HEARTBEATS, HeartbeatFile, Progress  # noqa: E402
from sde_search.pruner import EvidenceASHA  # noqa: E402
from sde_search.runfolder import RunInfo  # noqa: E402
from sde_search.sampler import baseline_points, make_sampler, optuna_space, warm_designs  # noqa: E402
from sde_search.searcher import FullBudgetOptunaSearch  # noqa: E402
from sde_search.tracking import TrialTracker  # noqa: E402

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- what the command line chose


@dataclass(frozen=True, kw_only=True)
class SearchOptions:
    """How one search runs, as the command line says (``sde-search --task T.yaml ...``).

    Attributes:
        runs_dir: The folder of run folders (``--runs-dir``).
        name: A new run's name (``--name``); None: ``<task>-<date>-<time>``.
        resume: The run to resume (``--resume RUN``; ``latest``: the task's newest); None: a new search.
        address: A Ray cluster to join (``--address``); None: a local Ray on 127.0.0.1.
        tracking_uri: The MLflow store (``--tracking-uri``); None: the task's, else SQLite in the runs folder.
        storage: Shared storage for Tune's experiment and a copy of the run folder (``--storage``, a path or a URI
            pyarrow opens); None: the task's ``tracking.storage``, else the run folder alone. A resumed search
            keeps the storage it started with; given with ``--resume``, it is where a run folder missing here is
            fetched from.
        overrides: The ``--set`` overrides, kept in ``run.json`` so a resume or a report loads the same task.
        warm_start: Earlier runs whose best designs are tried first (``--warm-start``).
    """

    runs_dir: Path = Path("runs")
    name: str | None = None
    resume: str | None = None
    address: str | None = None
    tracking_uri: str | None = None
    storage: str | None = None
    overrides: tuple[str, ...] = ()
    warm_start: tuple[str, ...] = ()


@dataclass(frozen=True)
class TunePlan:
    """What a search's Tuner is built from: the task, the space and the run, and what follows from them.

    Attributes:
        task: The task searched.
        space: The search space.
        info: The run (its folder, names and MLflow ids).
        warm: Designs of earlier searches to try first (after the baselines).
    """

    task: Task
    space: SpaceConfig
    info: RunInfo
    warm: tuple[Design, ...] = ()

    @property
    def run_dir(self) -> Path:
        """The run folder."""
        return Path(self.info.run_dir)

    @cached_property
    def searched(self) -> dict[str, Any]:
        """The searched params' Optuna distributions (flat names: ``design.*``, ``train.*``)."""
        return optuna_space(self.space)[0]

    @cached_property
    def fixed(self) -> dict[str, Any]:
        """The space's fixed params, which complete each trial's config."""
        return optuna_space(self.space)[1]

    @property
    def metric(self) -> str:
        """The searched metric (ASHA ranks on it; the Pareto objective adds ``score_ood`` for the sampler)."""
        return OBJECTIVE_METRIC[self.task.config.objective]

    @property
    def max_t(self) -> int:
        """ASHA's horizon: the report count of the longest trial the space allows."""
        return report_range(self.task, self.space)[1]

    @property
    def reuse_actors(self) -> bool:
        """Tune's ``reuse_actors``: ``auto`` reuses on CPU and starts a fresh process per GPU trial."""
        gpu = self.space.resources.gpu > 0
        return (not gpu) if self.space.reuse_actors == "auto" else self.space.reuse_actors


# ---------------------------------------------------------------- trainable


def trainable(config: dict[str, Any], task: Task, fixed: dict[str, Any], threads: int, metric: str,
              heartbeats: str | None = None) -> None:
    """One Tune trial: fit() with Tune reporting and checkpoints (heavy imports happen here).

    ``heartbeats``: a folder where the trial's progress lines go (:class:`HeartbeatFile`), for the driver to show.
    """
    from ray.tune import Checkpoint

    from sde_search import trial

    _freeze_imports()

    design, hparams = split_params({**fixed, **config})
    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_from = checkpoint.to_directory(tempfile.mkdtemp(prefix="sde-resume-"))
    workdir = tempfile.mkdtemp(prefix="sde-ckpt-")
    where: list[dict[str, str]] = [raynodes.placement()]  # sent once, with this run's first report

    def send_to_tune(metrics: dict[str, float], path: str | None) -> None:
        # asha_score: the metric a search started by an earlier version ranks on; its pickled scheduler
        # needs it in every result when such a search is resumed.
        result: dict[str, Any] = {**metrics, "asha_score": metrics[metric]}
        if where:
            result[tracking.PLACEMENT] = where.pop()
        tune.report(result, checkpoint=Checkpoint.from_directory(path) if path else None)

    with console.shown(), HeartbeatFile.installed(heartbeats, tune.get_context().get_trial_id()):
        trial.fit(task, design, hparams, report=send_to_tune, checkpoint_dir=workdir, resume_from=resume_from,
                  threads=threads)


def _freeze_imports() -> None:
    """Hides the import-time objects of a worker (torch, transformers, peft: about 400k) from the collector.

    Done once per worker process; the ``gc.collect()`` that ends each trial then takes 1 ms instead of 0.2 s.
    """
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()


# ---------------------------------------------------------------- the command


def run_search(task: Task, space: SpaceConfig, space_path: Path, options: SearchOptions) -> int:
    """``sde-search --task T.yaml``: runs (or resumes) a search and prints the report.

    Nothing is created (run folder, MLflow run) before the names, the tracking store and the Ray
    resources have been checked, so a mistake leaves nothing behind.
    """
    runs_dir = Path(options.runs_dir).resolve()
    check_runs_dir(runs_dir)
    info: RunInfo | None = None
    if options.resume:
        run_dir = _find_run(runs_dir, options.resume, task, options.storage or task.config.tracking.storage)
        info = RunInfo.load(run_dir)
        task, space = _as_started(info, task, space, space_path, options)
    else:
        new = _new_run_info(task, space_path, options, runs_dir)
        run_dir = Path(new.run_dir)
    warm = warm_designs(runs_dir, options.warm_start) if options.warm_start else []
    if warm:
        log.info("warm start: " + ", ".join(d.short() for d in warm))
    if info is not None:
        raynodes.stop_leftovers(run_dir)
    ray_init_s = raynodes.start(options.address, space)
    try:
        warning = options.address and raynodes.shared_disk_warning(info.storage if info is not None else new.storage)
        if warning:
            log.warning(warning)
        if info is None:
            # run.json first, so that a kill at any later moment leaves a folder that --resume can open
            run_dir.mkdir(parents=True)
            info = new
            info.save()
        if not info.parent_run_id:  # a new search, or one killed before its MLflow run existed
            _, parent = tracking.start_parent(info.__dict__, task, space, runs_dir / "mlartifacts")
            info = RunInfo(**{**info.__dict__, "parent_run_id": parent})
            info.save()
        else:
            tracking.client(info).update_run(info.parent_run_id, status="RUNNING")
        raynodes.log_to(logging.FileHandler(run_dir / "ray.log"))
        if not options.address:
            raynodes.record_processes(run_dir)
        return execute(TunePlan(task, space, info, tuple(warm)), ray_init_s=ray_init_s)
    except BaseException as exc:  # the parent run must not stay RUNNING; --resume reopens it
        if info is not None and info.parent_run_id:
            tracking.mark_parent(info, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", repr(exc)[:250])
        if not options.resume and not isinstance(exc, KeyboardInterrupt) and not runfolder.has_results(run_dir):
            _remove_new_run(run_dir, info)
        raise
    finally:
        ray.shutdown()


def _as_started(info: RunInfo, task: Task, space: SpaceConfig, space_path: Path, options: SearchOptions,
                ) -> tuple[Task, SpaceConfig]:
    """The task and space of a resumed search: as it started, with the ``--set`` overrides its ``run.json`` keeps.

    A resume continues the same search, so its trials must train as the earlier ones did: the recorded overrides
    apply whether or not the command line repeats them; one that gives a key another value is refused (exit 2)
    rather than mixed in.
    """
    given, started = tuple(options.overrides), tuple(info.overrides)
    if given == started:
        return task, space

    def values(sets: tuple[str, ...]) -> dict[str, str]:  # the value each key ends with (a later --set wins)
        return dict(s.split("=", 1) if "=" in s else (s, "") for s in sets)

    was, as_given = values(started), " ".join(f"--set {s}" for s in started)
    clash = [f"{k}={v}" for k, v in values(given).items() if was.get(k) != v]
    if clash:
        raise ConfigError([f"--resume {info.name}: --set {' --set '.join(clash)} differs from what the search started "
                           f"with ({as_given or 'no --set'}); a resume continues the same search: give the same "
                           "--set, or none"])
    recorded = Path(info.space_path)
    log.info(f"resuming {info.name} with the overrides it started with: {as_given}")
    task, space, _ = load_task_and_space(str(task.path), str(recorded if recorded.is_file() else space_path),
                                         started, options.address, new_search=False)
    return task, space


def _new_run_info(task: Task, space_path: Path, options: SearchOptions, runs_dir: Path) -> RunInfo:
    """The ``run.json`` of a new search, its parent run not made yet; checks its name and tracking store first."""
    name = options.name or f"{task.config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_run_name(name)
    run_dir = runs_dir / name
    if run_dir.exists():
        raise ConfigError([f"--name {name}: {run_dir} exists; pick another name or --resume {name}"])
    uri = tracking.tracking_uri_for(runs_dir, options.tracking_uri, task)
    if options.tracking_uri or task.config.tracking.uri:  # the default store's folder is made with the run
        tracking.check_tracking(uri)
    shared = options.storage or task.config.tracking.storage
    shared = storage.resolve(shared) if shared else ""
    if shared and storage.exists(storage.join(shared, name)):
        raise ConfigError([f"--name {name}: {preflight.redacted(storage.join(shared, name))} exists on the storage; "
                           f"pick another name or --resume {name}"])
    return RunInfo(name=name, run_dir=str(run_dir), task_path=str(task.path), space_path=str(space_path),
                   tracking_uri=uri, experiment=task.config.tracking.experiment or task.config.name,
                   parent_run_id="", study_name=study_name(task.config.name, name),
                   overrides=tuple(options.overrides), storage=shared)


MAX_RUN_NAME = 120  # Tune's trial folders add about 130 characters under it; most file systems allow 255


def check_run_name(name: str) -> None:
    """Refuses a run name that is not a plain, short folder name (raises ConfigError)."""
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
    blocked = preflight.unwritable_folder(runs_dir)
    if blocked is not None:
        raise ConfigError([f"--runs-dir {runs_dir}: {blocked[0]} {blocked[1]}"])


def _remove_new_run(run_dir: Path, info: RunInfo | None) -> None:
    """Removes what a new search created when it failed before any trial reported (folder, MLflow run)."""
    if info is not None and info.parent_run_id:
        with contextlib.suppress(Exception):
            tracking.client(info).delete_run(info.parent_run_id)
    shutil.rmtree(run_dir, ignore_errors=True)
    log.error(f"the search failed before any trial reported; removed {run_dir} and its MLflow run")  # on stderr


def _find_run(runs_dir: Path, which: str, task: Task, shared: str | None = None) -> Path:
    """The run folder ``--resume`` names; one missing here is fetched from the storage when one is given."""
    if which != "latest":
        path = runs_dir / which
        base = storage.resolve(shared) if shared else ""
        copy = preflight.redacted(storage.join(base, which)) if base else ""
        if not (path / "run.json").exists() and base:
            check_run_name(which)
            fetched = storage.pull_run(base, which, path)
            if fetched:
                log.info(f"fetched {fetched} files of run {which} from {copy}")
        if not (path / "run.json").exists():
            where = f" (nor at {copy})" if copy else ""
            raise ConfigError([f"--resume {which}: no run at {path}{where}"])
        return path
    candidates = sorted((p for p in runs_dir.glob(f"{task.config.name}-*") if (p / "run.json").exists()),
                        key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError([f"--resume: no earlier run of task {task.config.name} under {runs_dir}"])
    return candidates[-1]


# ---------------------------------------------------------------- the Tune run


def execute(plan: TunePlan, *, ray_init_s: float) -> int:
    """Builds the Tuner (or restores it) on the running Ray, runs it and reports; returns the exit code."""
    task, space, info = plan.task, plan.space, plan.info
    tracking.use_store(info)
    if task.config.model.name == "tiny":
        from sde_search.model import build_tiny_tokenizer

        build_tiny_tokenizer(task)  # once on the driver; trials load it from the cache
    fn = tune.with_resources(tune.with_parameters(trainable, task=task, fixed=plan.fixed,
                                                  threads=max(1, int(space.resources.cpu)), metric=plan.metric,
                                                  heartbeats=str(plan.run_dir / HEARTBEATS)),
                             {"cpu": space.resources.cpu, "gpu": space.resources.gpu})
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", resume.SNAPSHOT_PERIOD_S)  # read when the Tuner starts
    t0 = time.time()
    try:
        tuner = _tuner(plan, fn)
        log.info(f"search {info.name}: {space.size()} designs, {space.budget.num_samples} trials, "
                 f"{space.budget.max_concurrent} at once; objective {plan.metric}; ASHA "
                 f"{'on' if space.asha.enabled else 'off'} (max_t {plan.max_t}); MLflow {info.tracking_uri}")
        results = tuner.fit()
    finally:
        ray.shutdown()
    finished = results.num_terminated + results.num_errors
    if finished < space.budget.num_samples:  # Ctrl-C: Tune saved its state and returned early
        if info.storage:
            storage.RunMirror(info).push()
        log.info(f"\ninterrupted after {finished} of {space.budget.num_samples} trials; everything is saved. "
                 f"Continue with: sde-search --task {task.path} --resume {info.name}"
                 + (f" --runs-dir {plan.run_dir.parent}" if plan.run_dir.parent.name != "runs" else "")
                 + (f" (elsewhere add --storage '{preflight.redacted(info.storage)}')" if info.storage else ""))
        raise KeyboardInterrupt
    wall = time.time() - t0 + ray_init_s
    code = stages.finish(task, space, info, results, metric=plan.metric, wall_s=wall, ray_init_s=ray_init_s)
    if info.storage:  # the report and the seed stage's files join the copy there
        log.info(f"run folder copied to {preflight.redacted(storage.run_uri(info))} ({storage.push_run(info)} files)")
    return code


def _tuner(plan: TunePlan, fn: Any) -> tune.Tuner:
    """The Tuner of an interrupted search restored (its state repaired first), else a new one."""
    info = plan.info
    experiment = storage.experiment_uri(info)
    if storage.exists(experiment):
        if info.storage:  # the resume repairs the state files in the run folder, then puts them back
            storage.pull_state(info)
        objective = ["score", "score_ood"] if plan.task.config.objective == "pareto" else plan.metric
        repair = resume.prepare(info, objective)
        for line in repair.lines():
            log.info(line)
        if not repair.fresh:
            if info.storage:
                storage.push_state(info)
            tracking.close_stale_runs(info)
            tuner = tune.Tuner.restore(experiment, trainable=fn, resume_unfinished=True, restart_errored=True)
            resume.relocate(tuner, info)
            log.info(f"resuming {info.name} from {preflight.redacted(experiment)}")
            return tuner
        if info.storage:  # set aside there too, as resume.prepare did with the run folder's copy
            storage.discard_experiment(info)
    return _new_tuner(plan, fn, _callbacks(plan))


def _callbacks(plan: TunePlan) -> list[tune.Callback]:
    """Tune's callbacks: result files, MLflow runs, progress lines, and the records a resume reads."""
    info = plan.info
    return [JsonLoggerCallback(),  # result.json per trial: the report's histories (other loggers stay off)
            TrialTracker(tracking_uri=info.tracking_uri, experiment_name=info.experiment, fixed=plan.fixed,
                         tags={"mlflow.parentRunId": info.parent_run_id, "sde.kind": "trial"}),
            Progress(plan.space.budget.num_samples, plan.metric, plan.run_dir / HEARTBEATS, plan.fixed),
            resume.ResultLog(plan.run_dir), resume.StateKeeper(plan.run_dir),
            *([storage.RunMirror(info)] if info.storage else [])]


def _new_tuner(plan: TunePlan, fn: Any, callbacks: Sequence[tune.Callback]) -> tune.Tuner:
    """A new Tuner: the Optuna searcher on the run's study, ASHA (or FIFO), the budget and the callbacks."""
    space, searched = plan.space, plan.searched
    study_store = optuna.storages.RDBStorage(f"sqlite:///{plan.run_dir / 'optuna.db'}")
    pareto = plan.task.config.objective == "pareto"
    search_alg = FullBudgetOptunaSearch(space=searched, metric=["score", "score_ood"] if pareto else plan.metric,
                                        mode=["max", "max"] if pareto else "max",
                                        points_to_evaluate=baseline_points(space, searched, plan.task,
                                                                           plan.warm) or None,
                                        sampler=make_sampler(space, searched), study_name=plan.info.study_name,
                                        storage=study_store)
    return tune.Tuner(
        fn,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=_scheduler(plan),
                                    num_samples=space.budget.num_samples,
                                    max_concurrent_trials=space.budget.max_concurrent,
                                    reuse_actors=plan.reuse_actors),
        run_config=tune.RunConfig(name=storage.EXPERIMENT,
                                  storage_path=storage.run_uri(plan.info),
                                  callbacks=list(callbacks), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                                  failure_config=tune.FailureConfig(max_failures=space.budget.max_failures)),
    )


def _scheduler(plan: TunePlan) -> Any:
    """ASHA stopping on the searched metric, counted in reports (evidence-gated, see :class:`EvidenceASHA`)."""
    asha = plan.space.asha
    if not asha.enabled:
        return FIFOScheduler()
    evidence = {"score_ood": ("measured_ood",), "score_mean": ("measured", "measured_ood")}
    return EvidenceASHA(time_attr="report", metric=plan.metric, mode="max", max_t=plan.max_t,
                        grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
                        defer_until=asha.defer_until, margin=asha.margin, rung_value=asha.rung_value,
                        evidence_keys=evidence.get(plan.metric, ("measured",)))
