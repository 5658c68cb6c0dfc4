"""The tracking callback's retry queue, against a fake MLflow: nothing is lost or reordered while MLflow is away.

``TrialTracker`` queues every tracking call; a call that raises stays at the head of the queue and is retried,
in order, with the calls queued behind it, on the next report. These tests replace the MLflow client and Ray's
MLflow helper with fakes that can be switched off, so no tracking store or server is involved.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from sde_search import tracking
from sde_search.tracking import TrialTracker

PARENT = "parent-run"


class Down(ConnectionError):
    """What the fake raises while MLflow is away."""


class FakeMlflow:
    """The MLflow calls the callback makes, recorded in the order they reach the store.

    ``down``: every call raises :class:`Down`. ``fail_after``: that many more calls succeed, then MLflow goes
    down (a server lost in the middle of a flush). ``refuse_params``: the store rejects every params batch for
    good (MlflowException INVALID_PARAMETER_VALUE, e.g. a param changed on resume).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.down = False
        self.fail_after: int | None = None
        self.refuse_params = False
        self.attempts = 0
        self.runs = 0

    def _reach(self) -> None:
        self.attempts += 1
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.down, self.fail_after = True, None
            else:
                self.fail_after -= 1
        if self.down:
            raise Down("connection refused")

    # MlflowClient
    def get_experiment_by_name(self, name: str) -> None:
        self._reach()
        return None  # no earlier run of the trial: a new one is started

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = ()) -> None:
        self._reach()
        if params and self.refuse_params:
            raise MlflowException("param changed", error_code=INVALID_PARAMETER_VALUE)
        if params:
            self.calls.append(("params", run_id, tuple((p.key, p.value) for p in params)))
        if tags:
            self.calls.append(("tags", run_id, dict((t.key, t.value) for t in tags)))
        if metrics:
            self.calls.append(("metrics", run_id, metrics[0].step, tuple(metrics)))

    # Ray's _MLflowLoggerUtil
    def start_run(self, tags: dict[str, str], run_name: str) -> Any:
        self._reach()
        self.runs += 1
        run_id = f"run-{self.runs}"
        self.calls.append(("start", run_id, run_name, tags["trial_name"]))
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id))

    def end_run(self, run_id: str, status: str) -> None:
        self._reach()
        self.calls.append(("end", run_id, status))


class Trial:
    """What the callback reads of a Tune trial."""

    def __init__(self, trial_id: str, config: dict[str, Any]):
        self.trial_id, self.config = trial_id, config

    def __str__(self) -> str:
        return f"trainable_{self.trial_id}"


@pytest.fixture
def mlflow() -> FakeMlflow:
    return FakeMlflow()


@pytest.fixture
def tracker(mlflow: FakeMlflow) -> TrialTracker:
    """The callback as Tune sets it up, talking to the fake instead of a tracking store."""
    cb = TrialTracker(tracking_uri="sqlite:///never-opened.db", experiment_name="demo",
                      tags={"mlflow.parentRunId": PARENT, "sde.kind": "trial"}, fixed={})
    cb._trial_runs = {}  # what setup() creates, without connecting to MLflow
    cb._client = mlflow  # type: ignore[assignment]
    cb.mlflow_util = mlflow  # type: ignore[assignment]
    return cb


TRIAL = Trial("t1", {"design.output_format": "json", "train.lr": 0.001})


def result(report: int, score: float) -> dict[str, Any]:
    """One trial report as Tune hands it over (the project's metrics and some of Tune's bookkeeping)."""
    return {"score": score, "progress": report / 4, "report": float(report), "training_iteration": report,
            "trial_id": TRIAL.trial_id, "done": False}


def metric_steps(mlflow: FakeMlflow) -> list[int]:
    return [c[2] for c in mlflow.calls if c[0] == "metrics"]


def test_calls_reach_mlflow_at_once_while_it_is_up(tracker: TrialTracker, mlflow: FakeMlflow) -> None:
    tracker.log_trial_start(TRIAL)
    tracker.log_trial_result(1, TRIAL, result(1, 0.2))
    tracker.log_trial_end(TRIAL)
    assert [c[0] for c in mlflow.calls] == ["start", "params", "metrics", "end"]
    assert mlflow.calls[0][2] == tracking.run_name(TRIAL.config, {})  # named by its design, not trainable_t1
    assert mlflow.calls[0][2].startswith("first/exclude/json/placeholder/text/none ")
    assert mlflow.calls[0][3] == "trainable_t1"  # the tag a resume matches runs on
    assert mlflow.calls[1][2] == (("design.output_format", "json"), ("train.lr", "0.001"))
    assert mlflow.calls[3] == ("end", "run-1", "FINISHED")
    assert not tracker.queue and not tracker.failing


def test_while_mlflow_is_down_calls_wait_in_order_and_are_sent_when_it_is_back(
        tracker: TrialTracker, mlflow: FakeMlflow, caplog: pytest.LogCaptureFixture) -> None:
    mlflow.down = True
    with caplog.at_level(logging.WARNING, logger="sde_search"):
        tracker.log_trial_start(TRIAL)
        for k in (1, 2, 3):
            tracker.log_trial_result(k, TRIAL, result(k, k / 10))
    assert mlflow.calls == [] and len(tracker.queue) == 4 and tracker.failing
    unreachable = [r for r in caplog.records if "MLflow unreachable" in r.getMessage()]
    assert len(unreachable) == 1  # said once, not once per report
    assert mlflow.attempts == 4  # each new call retries the head only; the rest wait behind it

    mlflow.down = False
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sde_search"):
        tracker.log_trial_result(4, TRIAL, result(4, 0.4))
    assert [c[0] for c in mlflow.calls] == ["start", "params", "metrics", "metrics", "metrics", "metrics"]
    assert metric_steps(mlflow) == [1, 2, 3, 4]  # in the order the trial reported them
    scores = [next(m.value for m in c[3] if m.key == "score") for c in mlflow.calls if c[0] == "metrics"]
    assert scores == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert not tracker.queue and not tracker.failing
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_a_server_lost_in_the_middle_of_a_flush_keeps_the_rest(tracker: TrialTracker, mlflow: FakeMlflow) -> None:
    mlflow.down = True
    tracker.log_trial_start(TRIAL)
    for k in (1, 2, 3):
        tracker.log_trial_result(k, TRIAL, result(k, k / 10))
    mlflow.down, mlflow.fail_after = False, 4  # the run's start (2 calls), params, report 1; then gone again
    tracker.log_trial_result(4, TRIAL, result(4, 0.4))
    assert metric_steps(mlflow) == [1] and len(tracker.queue) == 3 and tracker.failing
    mlflow.down = False
    tracker.log_trial_end(TRIAL)
    assert metric_steps(mlflow) == [1, 2, 3, 4]  # each once: nothing sent twice, nothing skipped
    assert mlflow.calls[-1] == ("end", "run-1", "FINISHED") and not tracker.queue


def test_a_report_keeps_the_time_it_was_made_when_sent_later(tracker: TrialTracker, mlflow: FakeMlflow,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    tracker.log_trial_start(TRIAL)
    mlflow.down = True
    monkeypatch.setattr(tracking.time, "time", lambda: 1000.0)
    tracker.log_trial_result(1, TRIAL, result(1, 0.1))
    mlflow.down = False
    monkeypatch.setattr(tracking.time, "time", lambda: 5000.0)
    tracker.log_trial_result(2, TRIAL, result(2, 0.2))
    stamps = {c[2]: {m.timestamp for m in c[3]} for c in mlflow.calls if c[0] == "metrics"}
    assert stamps == {1: {1_000_000}, 2: {5_000_000}}


def test_a_call_the_store_refuses_for_good_is_dropped_not_retried(tracker: TrialTracker, mlflow: FakeMlflow,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    mlflow.refuse_params = True
    with caplog.at_level(logging.WARNING, logger="sde_search"):
        tracker.log_trial_start(TRIAL)  # the run starts; its params are refused
        tracker.log_trial_result(1, TRIAL, result(1, 0.1))
    assert [c[0] for c in mlflow.calls] == ["start", "metrics"]  # the report is not held behind the refusal
    assert not tracker.queue and not tracker.failing
    assert any("refused a tracking call" in r.getMessage() for r in caplog.records)


def test_a_step_reported_again_after_a_resume_is_logged_once(tracker: TrialTracker, mlflow: FakeMlflow) -> None:
    tracker.log_trial_start(TRIAL)
    for k in (1, 2, 1, 2, 3):  # resumed from the checkpoint of report 0: reports 1 and 2 come again
        tracker.log_trial_result(k, TRIAL, result(k, k / 10))
    assert metric_steps(mlflow) == [1, 2, 3]


def test_calls_that_never_got_through_are_counted_at_the_end(tracker: TrialTracker, mlflow: FakeMlflow,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    tracker.log_trial_start(TRIAL)
    mlflow.down = True
    tracker.log_trial_result(1, TRIAL, result(1, 0.1))
    tracker.log_trial_end(TRIAL, failed=True)
    with caplog.at_level(logging.WARNING, logger="sde_search"):
        tracker.on_experiment_end([TRIAL])
    assert any("2 tracking calls never reached MLflow" in r.getMessage() for r in caplog.records)


def test_the_queue_holds_what_was_logged_not_a_later_state(tracker: TrialTracker, mlflow: FakeMlflow) -> None:
    """A queued report is the metrics of that report, even if Tune reuses and changes the result dict."""
    tracker.log_trial_start(TRIAL)
    mlflow.down = True
    shared = result(1, 0.1)
    tracker.log_trial_result(1, TRIAL, shared)
    shared.update(score=0.9, report=2.0)
    mlflow.down = False
    tracker.log_trial_end(TRIAL)
    (sent,) = [c for c in mlflow.calls if c[0] == "metrics"]
    assert sent[2] == 1 and next(m.value for m in sent[3] if m.key == "score") == pytest.approx(0.1)
    assert all(isinstance(m, Metric) for m in sent[3])  # the entities MLflow's log_batch takes


# --- where Ray placed the trial ---------------------------------------------------------------------------------------

NODE_A, NODE_B = "a1" * 28, "b2" * 28  # Ray node ids are 56 hex characters


def placed(report: int, score: float, node: str, gpus: str = "", visible: str = "unset") -> dict[str, Any]:
    """A trial's first report after it started (or restarted): it carries its placement."""
    where = {"node_id": node, "node_ip": "127.0.0.1", "gpu_ids": gpus, "cuda_visible_devices": visible}
    return {**result(report, score), tracking.PLACEMENT: where, "node_ip": "127.0.0.1", "pid": 4242}


def tag_calls(mlflow: FakeMlflow) -> list[dict[str, str]]:
    return [c[2] for c in mlflow.calls if c[0] == "tags"]


def test_the_first_report_tags_the_run_with_its_placement_and_logs_no_placement_metric(
        tracker: TrialTracker, mlflow: FakeMlflow) -> None:
    tracker.log_trial_start(TRIAL)
    tracker.log_trial_result(1, TRIAL, placed(1, 0.1, NODE_A, gpus="1", visible="1"))
    tracker.log_trial_result(2, TRIAL, result(2, 0.2))
    assert tag_calls(mlflow) == [{"sde.node_id": NODE_A, "sde.node_ip": "127.0.0.1", "sde.gpu_ids": "1",
                                  "sde.cuda_visible_devices": "1"}]
    assert [c[1] for c in mlflow.calls if c[0] == "tags"] == ["run-1"]
    keys = {m.key for c in mlflow.calls if c[0] == "metrics" for m in c[3]}
    assert keys == {"score", "progress", "report"}  # no placement, node or pid among the metrics
    assert metric_steps(mlflow) == [1, 2]


def test_a_trial_restarted_on_another_node_gets_the_new_placement_though_its_step_repeats(
        tracker: TrialTracker, mlflow: FakeMlflow) -> None:
    tracker.log_trial_start(TRIAL)
    tracker.log_trial_result(1, TRIAL, placed(1, 0.1, NODE_A))
    tracker.log_trial_result(2, TRIAL, result(2, 0.2))
    tracker.log_trial_result(2, TRIAL, placed(2, 0.25, NODE_B))  # the node died; restored from report 1's checkpoint
    tracker.log_trial_result(3, TRIAL, result(3, 0.3))
    assert [t["sde.node_id"] for t in tag_calls(mlflow)] == [NODE_A, NODE_B]  # the last one is the run's tag
    assert metric_steps(mlflow) == [1, 2, 3]  # the repeated step is still logged once


def test_a_placement_sent_while_mlflow_is_down_waits_in_order(tracker: TrialTracker, mlflow: FakeMlflow) -> None:
    mlflow.down = True
    tracker.log_trial_start(TRIAL)
    tracker.log_trial_result(1, TRIAL, placed(1, 0.1, NODE_A, gpus="0", visible="0"))
    mlflow.down = False
    tracker.log_trial_end(TRIAL)
    assert [c[0] for c in mlflow.calls] == ["start", "params", "tags", "metrics", "end"]
    assert tag_calls(mlflow)[0]["sde.gpu_ids"] == "0" and not tracker.queue


@pytest.mark.parametrize("where", [None, "a1b2", ["node"], 3])
def test_a_report_without_a_placement_mapping_gives_no_tags(where: Any) -> None:
    report = result(1, 0.1) if where is None else {**result(1, 0.1), tracking.PLACEMENT: where}
    assert tracking.placement_tags(report) == {}
    assert tracking.PLACEMENT not in tracking.trial_metrics(report)
