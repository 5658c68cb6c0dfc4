"""Resuming a killed search: one consistent view of Tune's state, the Optuna study and MLflow.

A search writes three stores at different moments. The Optuna study (SQLite) and MLflow take each event at
once; Tune snapshots its experiment state (trial statuses, searcher) only every few seconds and copies it into
the run folder in a background thread. A SIGKILL therefore leaves Tune's view older than the study's, or a
half-copied state file. Restoring Tune from that view as it is reruns finished trials and then crashes when the
searcher reports to an Optuna trial that is already finished.

So a search keeps its own copy of each Tune snapshot, written atomically (:class:`StateKeeper`), and before
``Tuner.restore`` :func:`prepare` makes Tune's view agree with the durable records:

* A trial that Tune thought unfinished but whose Optuna trial is finished, or whose ``result.json`` already holds
  its final report, is marked finished (it is never trained again); the study learns about any finish it missed.
* An Optuna trial started after the snapshot (unknown to Tune) is handed by the searcher to the next trial Tune
  asks for, so both keep counting the same trials. Its run folder is moved to ``orphans/``. (One that also
  finished within those few seconds is trained again: Tune cannot be told of a trial it never created.)
* Every result a trial reported is kept as it arrives (:class:`ResultLog`) and put back into Tune's ``result.json``.
* MLflow: the runs of finished trials are closed and their missing metrics filled in from those results; runs of
  trials Tune never knew are deleted; a trial keeps one run.
* With no usable Tune state at all (killed before the first snapshot), the Tune experiment and the study start
  afresh; nothing had been trained.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray.cloudpickle as cloudpickle
from ray import tune

from sde_search import runfolder, tracking
from sde_search.runfolder import RunInfo, write_atomic

log = logging.getLogger(__name__)

STATE_GLOBS = ("experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json")
TUNE_TRIAL_ATTR = "tune_trial_id"  # Optuna user attribute: the Tune trial an Optuna trial belongs to
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
SNAPSHOT_PERIOD_S = "3"
"""Seconds between Tune's state snapshots (Tune's own default is at least 10 s): the less Tune's view lags, the
less a resumed trial retrains from an older checkpoint. One snapshot of a 12-trial search is about 1 MB."""


# ---------------------------------------------------------------- keeping a consistent copy


class StateKeeper(tune.Callback):
    """Copies each new Tune snapshot into ``<run>/state/`` as one atomic generation.

    Tune's own copy into the run folder is a background, file-by-file copy; this one is complete or absent.
    """

    def __init__(self, run_dir: Path):
        """Keeps the copies under ``run_dir / 'state'``."""
        self.root = Path(run_dir) / "state"
        self.seen: int | None = None

    def relocate(self, info: RunInfo) -> None:
        """Keeps the copies in ``info``'s run folder from now on (see :func:`relocate`)."""
        self.root = Path(info.run_dir) / "state"

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:  # noqa: D102
        if trials:
            self.keep(Path(trials[0].storage.experiment_driver_staging_path))

    def on_experiment_end(self, trials: list, **info: Any) -> None:  # noqa: D102
        self.on_step_end(0, trials)

    def keep(self, staging: Path) -> None:
        """Copies the snapshot files in ``staging`` when the experiment state changed since the last copy."""
        states = sorted(staging.glob(STATE_GLOBS[0]))
        if not states:
            return
        stamp = states[-1].stat().st_mtime_ns
        if stamp == self.seen:
            return
        files = [p for pattern in STATE_GLOBS for p in sorted(staging.glob(pattern))[-1:]]
        self.root.mkdir(exist_ok=True)
        gen = self.root / f"gen-{stamp}"
        tmp = self.root / f".tmp-{stamp}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for src in files:
            shutil.copy2(src, tmp / src.name)
        os.replace(tmp, gen)
        write_atomic(self.root / "LATEST", gen.name)
        for old in self.root.iterdir():
            if old.name not in (gen.name, "LATEST"):
                shutil.rmtree(old, ignore_errors=True)
        self.seen = stamp


class ResultLog(tune.Callback):
    """Appends every trial result to ``<run>/results/<trial id>.jsonl`` the moment it arrives.

    Tune's own ``result.json`` is written in a staging folder and copied into the run folder with each snapshot,
    so a kill loses the results since the last one, a trial's final report among them. This log is written
    before the searcher hears of the result, so a trial the study records as finished always has its final
    report here.
    """

    def __init__(self, run_dir: Path):
        """Keeps the logs under ``run_dir / 'results'``."""
        self.root = Path(run_dir) / runfolder.RESULTS

    def relocate(self, info: RunInfo) -> None:
        """Writes into ``info``'s run folder from now on (see :func:`relocate`)."""
        self.root = Path(info.run_dir) / runfolder.RESULTS

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:  # noqa: D102
        runfolder.append_result(self.root.parent, trial.trial_id, result)


def relocate(tuner: tune.Tuner, info: RunInfo) -> None:
    """Points the callbacks of a restored Tuner at the run folder where it is now.

    Tune restores its callbacks from the pickled Tuner, holding the run folder they were made for; a run fetched
    from shared storage onto another machine, or a moved folder, lives elsewhere now. The callbacks of this package
    have a ``relocate(info)`` method; others are left as they are.
    """
    local = getattr(tuner, "_local_tuner", None)  # None under Ray Client, where the callbacks live on the cluster
    for callback in (local.get_run_config().callbacks or []) if local is not None else []:
        if hasattr(callback, "relocate"):
            callback.relocate(info)


def restore_snapshot(run_dir: Path) -> bool:
    """Puts the kept snapshot (if any) in place of Tune's own state files; returns whether one was kept."""
    root = run_dir / "state"
    try:
        gen = root / (root / "LATEST").read_text().strip()
    except OSError:
        return False
    if not gen.is_dir() or not any(gen.glob(STATE_GLOBS[0])):
        return False
    tune_dir = run_dir / "tune"
    for pattern in STATE_GLOBS:
        for stale in tune_dir.glob(pattern):
            stale.unlink()
    for src in gen.iterdir():
        shutil.copy2(src, tune_dir / src.name)
    return True


# ---------------------------------------------------------------- reading the stores


@dataclass
class TuneTrial:
    """One trial of Tune's saved state, with the parts :func:`prepare` may change."""

    state: dict[str, Any]  # Trial.get_json_state()'s first part, decoded
    meta: dict[str, Any]  # its run metadata (last_result, ...)

    @property
    def trial_id(self) -> str:
        """Tune's trial id."""
        return self.state["trial_id"]

    @property
    def status(self) -> str:
        """PENDING, RUNNING, PAUSED, TERMINATED or ERROR."""
        return self.state["status"]

    @property
    def logdir(self) -> str:
        """The trial's folder name under ``tune/``."""
        return self.state["relative_logdir"]


def load_state(tune_dir: Path) -> tuple[Path, dict[str, Any], list[TuneTrial]] | None:
    """Tune's newest experiment state with its trials, or None when there is none that can be used."""
    if not (tune_dir / "tuner.pkl").is_file():
        return None
    states = sorted(tune_dir.glob(STATE_GLOBS[0]))
    searchers = sorted(tune_dir.glob(STATE_GLOBS[1]))
    if not states or not searchers:
        return None
    try:
        data = json.loads(states[-1].read_text())
        trials = [TuneTrial(json.loads(s), json.loads(m)) for s, m in data["trial_data"]]
        if not trials:  # Tune cannot restore an experiment without trials
            return None
        for t in trials:
            _ = t.trial_id, t.status, t.logdir
        with open(searchers[-1], "rb") as f:
            pickle.load(f)
        with open(tune_dir / "tuner.pkl", "rb") as f:
            pickle.load(f)
    except Exception as exc:  # noqa: BLE001 - any damage means: this state cannot be restored
        log.warning("Tune state in %s unusable (%s: %s)", tune_dir, type(exc).__name__, str(exc)[:200])
        return None
    return states[-1], data, trials


# ---------------------------------------------------------------- making them agree


@dataclass
class Repair:
    """What :func:`prepare` changed, for the terminal and the tests."""

    fresh: bool = False
    finished: list[str] = field(default_factory=list)  # Tune trials marked finished from the durable records
    told: list[int] = field(default_factory=list)  # Optuna trials told a finish they had missed
    orphans: list[int] = field(default_factory=list)  # Optuna trials Tune never knew, handed to the next trial
    lost: list[int] = field(default_factory=list)  # the same, but already finished: trained again
    closed_runs: int = 0
    deleted_runs: int = 0

    def lines(self) -> list[str]:
        """One line per kind of repair."""
        out = []
        if self.fresh:
            out.append("resume: the search was killed before Tune saved any state; it starts again (nothing was "
                       "trained)")
        if self.finished:
            out.append(f"resume: {len(self.finished)} trial(s) had finished after Tune's last snapshot; they are "
                       f"kept, not retrained: {', '.join(self.finished)}")
        if self.told:
            out.append(f"resume: the Optuna study learned {len(self.told)} finish(es) it had missed")
        if self.orphans:
            out.append(f"resume: {len(self.orphans)} trial(s) had started after Tune's last snapshot; they start "
                       "again (Optuna trial " + ", ".join(map(str, self.orphans)) + ")")
        if self.lost:
            out.append(f"resume: {len(self.lost)} trial(s) started and finished between two of Tune's snapshots; "
                       "Tune never recorded them, so they are trained again (the study keeps its first result: "
                       "Optuna trial " + ", ".join(map(str, self.lost)) + ")")
        if self.closed_runs or self.deleted_runs:
            out.append(f"resume: MLflow: {self.closed_runs} trial run(s) closed, {self.deleted_runs} removed")
        return out


def prepare(info: RunInfo, metric: str | list[str]) -> Repair:
    """Reconciles Tune's saved state, the Optuna study and MLflow of a killed search (see the module doc).

    Args:
        info: The search's ``run.json``.
        metric: What the study optimises (a list for a multi-objective study), to tell it a missed finish.
    """
    run_dir = Path(info.run_dir)
    tune_dir = run_dir / "tune"
    repair = Repair()
    restore_snapshot(run_dir)
    loaded = load_state(tune_dir)
    if loaded is None:
        _start_afresh(info)
        repair.fresh = True
        return repair
    state_path, data, trials = loaded
    study = optuna.load_study(study_name=info.study_name, storage=f"sqlite:///{run_dir / 'optuna.db'}")
    by_tune = {tune_id_of(study, t): t for t in study.get_trials(deepcopy=False)}
    reported = {t.trial_id: runfolder.trial_results(run_dir, t.trial_id, t.logdir) for t in trials}
    for trial in trials:
        ot = by_tune.get(trial.trial_id)
        results = reported[trial.trial_id]
        _restore_result_json(tune_dir / trial.logdir, results)
        last = results[-1] if results else None
        done_by_results = last is not None and float(last.get("progress", 0)) >= 1
        if trial.status not in ("TERMINATED", "ERROR") and (done_by_results or (ot is not None and ot.state in
                                                                                 FINISHED)):
            if ot is not None and ot.state == optuna.trial.TrialState.FAIL:
                trial.state["status"] = "ERROR"
            else:
                trial.state["status"] = "TERMINATED"
            if last is not None:
                trial.meta["last_result"] = last
            repair.finished.append(trial.trial_id)
        if ot is not None and ot.state == optuna.trial.TrialState.RUNNING and trial.status in ("TERMINATED",
                                                                                                "ERROR"):
            _tell(study, ot, trial, last, metric)
            repair.told.append(ot.number)
    known = {t.trial_id for t in trials}
    tagged = any(tune_id_of(study, ot) for ot in study.get_trials(deepcopy=False))  # False: an older version's
    for ot in study.get_trials(deepcopy=False) if tagged else ():
        if ot.state != optuna.trial.TrialState.WAITING and tune_id_of(study, ot) not in known:
            (repair.orphans if ot.state == optuna.trial.TrialState.RUNNING else repair.lost).append(ot.number)
    if repair.finished:
        data["trial_data"] = [[json.dumps(t.state), json.dumps(t.meta)] for t in trials]
        write_atomic(state_path, json.dumps(data))
        _set_live_trials(tune_dir, {t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")})
    _move_orphan_folders(tune_dir, known, run_dir / "orphans")
    _reconcile_mlflow(info, trials, reported, repair)
    return repair


def _set_live_trials(tune_dir: Path, live: set[str]) -> None:
    """Tells the saved concurrency limiter which trials still run.

    It counts the trials it let start until their completion reaches it; a trial marked finished here never
    completes again, so left counted it would hold a slot for ever and the search would wait for good.
    """
    for path in sorted(tune_dir.glob(STATE_GLOBS[2]))[-1:]:
        state = cloudpickle.loads(path.read_bytes())
        limiter = state.get("name:ConcurrencyLimiter")
        if limiter is None:
            return
        limiter["live_trials"] = set(live)
        limiter["num_unfinished_live_trials"] = len(live)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(cloudpickle.dumps(state))
        os.replace(tmp, path)


def tune_id_of(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str | None:
    """The Tune trial an Optuna trial belongs to (a finished trial handed on after a resume: noted on the study)."""
    return study.user_attrs.get(f"{TUNE_TRIAL_ATTR}:{trial.number}") or trial.user_attrs.get(TUNE_TRIAL_ATTR)


def _restore_result_json(trial_dir: Path, results: list[dict[str, Any]]) -> None:
    """Rewrites a trial's ``result.json`` with every result it reported (Tune's copy may miss the last ones).

    Tune reads it back on restore: the report's history and a finished trial's final metrics come from it.
    """
    if results:
        trial_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(trial_dir / "result.json", "".join(json.dumps(r, default=str) + "\n" for r in results))


def _tell(study: optuna.Study, ot: optuna.trial.FrozenTrial, trial: TuneTrial, last: Mapping[str, Any] | None,
          metric: str | list[str]) -> None:
    """Tells the study the finish of a trial that Tune recorded and the study missed."""
    state = optuna.trial.TrialState.FAIL
    values: Any = None
    if trial.status == "TERMINATED" and last is not None:
        if float(last.get("progress", 0)) >= 1:
            keys = metric if isinstance(metric, list) else [metric]
            values = [float(last[k]) for k in keys] if all(k in last for k in keys) else None
            state = optuna.trial.TrialState.COMPLETE if values is not None else optuna.trial.TrialState.FAIL
        else:
            state = optuna.trial.TrialState.PRUNED
    with contextlib.suppress(Exception):  # a value Optuna refuses (NaN): the trial stays as it is
        study.tell(ot.number, values if state == optuna.trial.TrialState.COMPLETE else None, state=state)


def _move_orphan_folders(tune_dir: Path, known: Iterable[str], to: Path) -> None:
    """Moves trial folders of trials Tune does not know out of its experiment folder."""
    known = set(known)
    for folder in tune_dir.glob("trainable_*"):
        trial_id = folder.name.split("_")[1] if folder.name.count("_") >= 2 else ""
        if folder.is_dir() and trial_id not in known:
            to.mkdir(exist_ok=True)
            os.replace(folder, to / folder.name)


def _start_afresh(info: RunInfo) -> None:
    """Sets aside the Tune experiment and the study of a search killed before Tune saved a usable state.

    They move to ``discarded/<time>/`` rather than being deleted; their MLflow trial runs are marked deleted.
    """
    run_dir = Path(info.run_dir)
    aside = run_dir / "discarded" / time.strftime("%Y%m%d-%H%M%S")
    for name in ("tune", "state", "optuna.db", "results"):
        if (run_dir / name).exists():
            aside.mkdir(parents=True, exist_ok=True)
            os.replace(run_dir / name, aside / name)
    c = tracking.client(info)
    for run in tracking.child_runs(info):  # MLflow's delete is soft: `mlflow gc` or the UI can still restore them
        c.delete_run(run.info.run_id)


def _reconcile_mlflow(info: RunInfo, trials: list[TuneTrial], reported: Mapping[str, list[dict[str, Any]]],
                      repair: Repair) -> None:
    """One run per Tune trial; finished trials' runs closed with every result; unknown trials' runs removed."""
    tracking.merge_duplicate_runs(info)
    c = tracking.client(info)
    by_name = {f"trainable_{t.trial_id}": t for t in trials}
    for run in tracking.child_runs(info):
        trial = by_name.get(run.data.tags.get("trial_name", ""))
        if trial is None:
            c.delete_run(run.info.run_id)
            repair.deleted_runs += 1
            continue
        if trial.status not in ("TERMINATED", "ERROR"):
            continue
        tracking.backfill(c, run.info.run_id, reported[trial.trial_id])
        status = "FINISHED" if trial.status == "TERMINATED" else "FAILED"
        if run.info.status != status:
            c.set_terminated(run.info.run_id, status=status)
            repair.closed_runs += 1
