"""What a running search shows: one line per trial event or heartbeat, with a status of the whole search.

Trials run in Ray workers whose output does not reach the terminal: a trial's heartbeat (its step, loss and
speed, logged by :class:`sde_search.steps.Heartbeat`) is written to the run folder by :class:`HeartbeatFile`,
and the driver's :class:`Progress` callback logs the ones it has not shown yet, beside trial starts, stops and
failures. The lines are log records at INFO (the command shows them; see :mod:`sde_search.console`).

Imports Ray (Tune's callback class); never MLflow or torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ray import tune

from sde_search import runfolder
from sde_search.console import PACKAGE_LOGGER
from sde_search.design import Design

log = logging.getLogger(__name__)

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
        # On another node of a cluster the driver's run folder may not exist and may not be creatable: then the
        # heartbeats land nowhere and the trial goes on (its reports reach the driver through Tune).
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)

    def emit(self, record: logging.LogRecord) -> None:  # noqa: D102
        beat = getattr(record, "heartbeat", None)
        if beat is None:
            return
        with contextlib.suppress(OSError):  # a full disk must not fail the trial; the driver shows no heartbeat
            runfolder.write_atomic(self.path, json.dumps(beat))

    @classmethod
    @contextlib.contextmanager
    def installed(cls, folder: str | None, trial_id: str) -> Iterator[None]:
        """Inside: the package's progress logs of this trial go to ``folder/<trial_id>.json`` (no folder: nowhere)."""
        if folder is None:
            yield
            return
        logger = logging.getLogger(PACKAGE_LOGGER)
        handler, level = cls(Path(folder) / f"{trial_id}.json"), logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)  # a worker's loggers default to WARNING, which drops the heartbeat
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)


class Progress(tune.Callback):
    """Logs trial events, trial heartbeats and a status line (at INFO); Ray's own output goes to ``ray.log``."""

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

    def relocate(self, info: runfolder.RunInfo) -> None:
        """Reads the heartbeats of ``info``'s run folder from now on (a restored search's folder may have moved)."""
        self.heartbeats = Path(info.run_dir) / HEARTBEATS

    def _line(self, text: str) -> None:
        elapsed = time.time() - self.t0
        finished = self.done + self.failed
        eta = "" if not finished else f", ETA {elapsed / finished * (self.total - finished) / 60:.1f} min"
        best = f"best {self.best[0]:.3f} ({self.best[1]})" if self.best else "best -"
        log.info(f"[{elapsed / 60:5.1f} min] {text:<58} | {finished}/{self.total} done ({self.stopped} stopped "
                 f"early, {self.failed} failed), {len(self.running)} running, {best}{eta}")

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
