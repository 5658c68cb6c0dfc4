"""Early stopping that keeps slow starters: ASHA that treats a constant answer as no evidence.

Plain ASHA cuts a trial at a rung when its score is below the rung's ``1 - 1/rf`` quantile. Early in training
many designs still write one default answer for every record (all ``unmentioned``), which scores kappa exactly
0: a rung full of such ties cuts by arrival order, and a design that learns its format a little later (JSON,
placeholders) is stopped before it shows anything. Here a result whose predictions measure nothing
(``measured`` 0: one distinct answer, or every generation a format error) is *deferred*: it is neither cut
nor recorded at the rung, and the trial goes on until it reports a measured score (then judged against that
rung's recorded scores) or reaches ``defer_until`` reports, after which it is judged like any other.

:func:`decide` is the rule on its own, so that ``bench/pruning.py`` replays the very rule the search runs.
Only this module and ``search`` talk to Ray.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any, cast

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

EVIDENCE_KEY = "measured"
"""The trial metric that says whether a report's predictions measure anything (1) or not (0)."""


def decide(recorded: MutableMapping[str, float], trial_id: str, value: float, *, evidence: bool, at_report: int,
           milestone: int, rf: float, defer_until: int, margin: float = 0.0) -> bool:
    """One rung decision; returns True to stop the trial, and records its value at the rung when it counts.

    Args:
        recorded: The rung's recorded values (trial id -> value), updated in place.
        trial_id: The trial.
        value: Its score at this report.
        evidence: Whether the report measured anything (not a constant answer or all format errors).
        at_report: The number of the report the value comes from.
        milestone: The rung's report number; a deferred trial judged at a later report is compared with the
            rung's values but not recorded there (its score comes from more training than theirs).
        rf: ASHA's reduction factor.
        defer_until: Up to this report a result without evidence is deferred (neither cut nor recorded).
        margin: A trial is cut only when it is more than this below the rung's cutoff (rung scores come from a
            small eval subset: a gap smaller than their noise is no evidence either).
    """
    if not evidence and at_report < defer_until:
        return False
    stop = bool(recorded) and value < _cutoff(list(recorded.values()), rf) - margin
    if at_report == milestone and not math.isnan(value):
        recorded[trial_id] = value
    return stop


def _cutoff(values: list[float], rf: float) -> float:
    """Ray's cutoff: the ``1 - 1/rf`` quantile (linear interpolation) of the values recorded at the rung."""
    import numpy as np

    return float(np.nanpercentile(values, (1 - 1 / rf) * 100))


class EvidenceASHA(ASHAScheduler):
    """``ASHAScheduler`` whose rungs skip results that measure nothing (see the module docstring).

    Two more guards against noise, validated on an exhaustive grid (``bench/results/pruning.md``): rung scores
    come from a small eval subset, so a trial is cut only when it is more than ``margin`` below the cutoff, and
    with ``rung_value="best"`` a trial is judged on its best score so far, not on one noisy last report.

    Args:
        defer_until: Report up to which a result without evidence is deferred (default: ``max_t``, so a trial
            that never writes a measured answer runs to the end and is never won by a constant score:
            ``measured`` 0 at the full budget keeps it off the leaderboard's top anyway).
        evidence_keys: The ``measured*`` flags the metric rests on.
        margin: How far below the rung's cutoff a trial must be to be cut.
        rung_value: ``last`` (Ray's ASHA) or ``best`` (best so far).
        **kwargs: ``ASHAScheduler``'s arguments (``time_attr``, ``metric``, ``mode``, ``max_t``,
            ``grace_period``, ``reduction_factor``).
    """

    def __init__(self, *, defer_until: int | None = None, evidence_keys: tuple[str, ...] = (EVIDENCE_KEY,),
                 margin: float = 0.0, rung_value: str = "last", **kwargs: Any):
        """See the class docstring (``evidence_keys``: the ``measured*`` flags the metric rests on)."""
        super().__init__(**kwargs)
        self._defer_until = defer_until if defer_until is not None else self._max_t
        self._evidence_keys = evidence_keys
        self._margin = margin
        self._rung_value = rung_value
        self._best: dict[str, float] = {}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:  # noqa: D102
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        at_report = int(result[self._time_attr])
        if at_report >= self._max_t and self._stop_last_trials:
            return TrialScheduler.STOP
        bracket = self._trial_info[trial.trial_id]
        # Ray sets the metric and its sign before any result arrives; the attributes are typed optional.
        value = cast(float, self._metric_op) * float(result[cast(str, self._metric)])
        if self._rung_value == "best" and not math.isnan(value):  # best so far: one noisy dip is no evidence
            value = self._best[trial.trial_id] = max(value, self._best.get(trial.trial_id, -math.inf))
        evidence = all(float(result.get(key, 1.0)) > 0 for key in self._evidence_keys)
        for milestone, recorded in bracket._rungs:  # descending milestones, as Ray's _Bracket.on_result
            if at_report < milestone or trial.trial_id in recorded:
                continue
            if decide(recorded, trial.trial_id, value, evidence=evidence, at_report=at_report, milestone=milestone,
                      rf=bracket.rf, defer_until=self._defer_until, margin=self._margin):
                self._num_stopped += 1
                return TrialScheduler.STOP
            break
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:  # noqa: D102
        # Ray's ASHA writes a finished trial's last value into the highest rung it has not recorded at; a
        # deferred trial's value would then land in a rung it never qualified at, with more training than the
        # others there. Only the trial's bookkeeping goes.
        self._trial_info.pop(trial.trial_id, None)
        self._best.pop(trial.trial_id, None)
