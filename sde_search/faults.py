"""Test fault injection: ``SDE_FAULT`` makes a trial fail or hang at a chosen report; unset, nothing happens.

``SDE_FAULT`` holds comma-separated ``kind@report[:dimension=value]`` clauses; with a ``dimension=value``
filter only matching designs are hit. The kinds:

- ``nan``: the report's training loss reads NaN, so the trial's own loss check fails it;
- ``raise``: a :class:`~sde_search.model.TrialError`; ``raise_once``: the same, only for the first trial
  that gets there (it leaves ``$SDE_FAULT_MARK.once``), so that a retried trial goes on;
- ``oom``: a ``torch.OutOfMemoryError``;
- ``hang_eval`` / ``hang_ckpt``: touch ``$SDE_FAULT_MARK``, then sleep before the evaluation / after the
  checkpoint is written but before it is reported (a test kills the search meanwhile);
  ``hang_once``: ``hang_eval`` for the first trial that gets there only (it leaves ``$SDE_FAULT_MARK.once``),
  so that the trial goes on when it is restarted after a test killed its node.

The training loop calls :func:`point` at three moments of each report. Tests and the kill benches set the
variables; nothing else should.

Imports torch (its out-of-memory error); never Ray or MLflow.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Literal

import torch

from sde_search.design import Design
from sde_search.model import TrialError

FAULT_ENV = "SDE_FAULT"  # tests inject: "raise@2", "raise_once@2", "nan@2", "oom@2", "hang_eval@2", "hang_once@2", ...
FAULT_MARK_ENV = "SDE_FAULT_MARK"  # a file the hang faults create when they start hanging
Moment = Literal["loss", "evaluate", "checkpoint"]
"""A report's fault points, in order: its loss is checked, it evaluates, its checkpoint was written."""


def point(moment: Moment, report: int, design: Design, loss: float = math.nan) -> float:
    """The fault point ``moment`` of report ``report`` (counted from 1): injects the fault ``SDE_FAULT`` names there.

    Args:
        moment: ``loss`` (a ``nan`` fault), ``evaluate`` (``raise``, ``raise_once``, ``oom``, ``hang_eval``,
            ``hang_once``) or ``checkpoint`` (``hang_ckpt``).
        report: The report's number.
        design: The trial's design (clauses may name one dimension's value).
        loss: At ``loss``: the report's training loss.

    Returns:
        ``loss``, or NaN where a ``nan`` fault poisons it.

    Raises:
        TrialError: A ``raise`` or ``raise_once`` fault.
        torch.OutOfMemoryError: An ``oom`` fault.
    """
    fault = _fault(report, design)
    if moment == "loss":
        return math.nan if fault == "nan" else loss
    if moment == "evaluate":
        if fault == "raise_once" and _first_time():
            raise TrialError(f"injected fault at report {report}, once ({FAULT_ENV})")
        if fault == "raise":
            raise TrialError(f"injected fault at report {report} ({FAULT_ENV})")
        if fault == "oom":
            raise torch.OutOfMemoryError(f"injected out-of-memory at report {report} ({FAULT_ENV})")
        if fault == "hang_eval" or (fault == "hang_once" and _first_time()):
            _hang()  # a test kills the driver (or the trial's node) now, "during evaluation"
    if moment == "checkpoint" and fault == "hang_ckpt":
        _hang()  # written but not yet handed to Tune: a test kills the driver "while a checkpoint is written"
    return loss


def _fault(report_index: int, design: Design) -> str | None:
    """The fault ``SDE_FAULT`` injects at this report (the first matching clause's kind), if any."""
    for clause in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
        head, _, only = clause.partition(":")
        kind, _, at = head.partition("@")
        dim, _, value = only.partition("=")
        if at.isdigit() and int(at) == report_index and (not only or str(getattr(design, dim, None)) == value):
            return kind
    return None


def _first_time() -> bool:
    """True the first time any trial asks (``SDE_FAULT_MARK``.once does not exist yet)."""
    mark = Path(os.environ.get(FAULT_MARK_ENV, "sde-fault-mark") + ".once")
    if mark.exists():
        return False
    mark.touch()
    return True


def _hang(seconds: float = 300) -> None:
    """Marks that it started (``SDE_FAULT_MARK``), then sleeps until the test kills the search."""
    mark = os.environ.get(FAULT_MARK_ENV)
    if mark:
        Path(mark).touch()
    time.sleep(seconds)
