"""``tracking.merge_duplicate_runs`` against a fake MLflow client: a resumed trial's two runs become one.

A trial resumed after a kill may open a second MLflow run. The merge keeps the newest run of each trial
(Ray's trial name), copies into it the metric steps only the older runs have, and deletes the older runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.entities import Metric

from sde_search import tracking

INFO = SimpleNamespace(tracking_uri="sqlite:///never-opened.db", experiment="demo", parent_run_id="parent")


class FakeClient:
    """The store as far as the merge sees it: runs with tags and metric histories; deletes and batches recorded."""

    def __init__(self) -> None:
        self.runs: dict[str, Any] = {}
        self.history: dict[tuple[str, str], list[Metric]] = {}
        self.batches: list[tuple[str, list[Metric]]] = []
        self.deleted: list[str] = []
        self.filters: list[str] = []

    def add_run(self, run_id: str, start: int, trial: str | None, history: dict[str, dict[int, float]]) -> None:
        tags = {"trial_name": trial} if trial else {}
        metrics = {key: steps[max(steps)] for key, steps in history.items() if steps}
        self.runs[run_id] = SimpleNamespace(info=SimpleNamespace(run_id=run_id, start_time=start, status="FINISHED"),
                                            data=SimpleNamespace(tags=tags, metrics=metrics))
        for key, steps in history.items():
            self.history[run_id, key] = [Metric(key, v, 1000 * step, step) for step, v in steps.items()]

    def get_experiment_by_name(self, name: str) -> Any:
        assert name == INFO.experiment
        return SimpleNamespace(experiment_id="1")

    def search_runs(self, experiment_ids: list[str], filter_string: str = "", **kwargs: Any) -> list[Any]:
        self.filters.append(filter_string)
        return list(self.runs.values())

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        return list(self.history.get((run_id, key), []))

    def log_batch(self, run_id: str, metrics: Sequence[Metric] = (), **kwargs: Any) -> None:
        assert run_id in self.runs, "logged into a deleted run"
        self.batches.append((run_id, list(metrics)))
        for m in metrics:
            self.history.setdefault((run_id, m.key), []).append(m)

    def delete_run(self, run_id: str) -> None:
        self.deleted.append(run_id)
        del self.runs[run_id]

    def steps(self, run_id: str, key: str) -> dict[int, float]:
        return {m.step: m.value for m in sorted(self.history.get((run_id, key), []), key=lambda m: m.step)}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    c = FakeClient()
    monkeypatch.setattr(tracking, "client", lambda info: c)
    return c


def test_the_newest_run_of_a_trial_gets_the_older_steps_and_the_older_run_goes(fake: FakeClient) -> None:
    fake.add_run("old", start=1, trial="trainable_a", history={"score": {1: 0.1, 2: 0.2, 3: 0.3}})
    fake.add_run("new", start=2, trial="trainable_a", history={"score": {3: 0.35, 4: 0.4}})  # report 3 again
    fake.add_run("other", start=3, trial="trainable_b", history={"score": {1: 0.5}})
    assert tracking.merge_duplicate_runs(INFO) == 1
    assert fake.deleted == ["old"] and set(fake.runs) == {"new", "other"}
    assert fake.steps("new", "score") == {1: 0.1, 2: 0.2, 3: 0.35, 4: 0.4}  # the newer run's own step 3 stays
    assert fake.steps("other", "score") == {1: 0.5} and all(run_id == "new" for run_id, _ in fake.batches)
    assert "parent" in fake.filters[0] and "trial" in fake.filters[0]  # only the search's trial runs


def test_the_newest_is_chosen_by_start_time_not_by_listing_order(fake: FakeClient) -> None:
    fake.add_run("third", start=30, trial="trainable_a", history={"score": {5: 0.5}})
    fake.add_run("first", start=10, trial="trainable_a", history={"score": {1: 0.1}, "train_loss": {1: 2.0}})
    fake.add_run("second", start=20, trial="trainable_a", history={"score": {3: 0.3}})
    assert tracking.merge_duplicate_runs(INFO) == 2
    assert sorted(fake.deleted) == ["first", "second"] and set(fake.runs) == {"third"}
    assert fake.steps("third", "score") == {1: 0.1, 3: 0.3, 5: 0.5}
    assert fake.steps("third", "train_loss") == {1: 2.0}  # a key only the old run had is copied too


def test_long_histories_go_in_batches_mlflow_accepts(fake: FakeClient) -> None:
    fake.add_run("old", start=1, trial="trainable_a", history={"score": {s: s / 2000 for s in range(1, 1201)}})
    fake.add_run("new", start=2, trial="trainable_a", history={"score": {1201: 0.6}})
    assert tracking.merge_duplicate_runs(INFO) == 1
    sizes = [len(metrics) for _, metrics in fake.batches]
    assert sum(sizes) == 1200 and max(sizes) <= 500 and len(sizes) == 3
    assert list(fake.steps("new", "score")) == list(range(1, 1202))


def test_single_runs_and_runs_without_a_trial_name_are_left_alone(fake: FakeClient) -> None:
    fake.add_run("a", start=1, trial="trainable_a", history={"score": {1: 0.1}})
    fake.add_run("x", start=2, trial=None, history={"score": {1: 0.2}})  # no trial_name: never paired
    fake.add_run("y", start=3, trial=None, history={"score": {1: 0.3}})
    assert tracking.merge_duplicate_runs(INFO) == 0
    assert fake.deleted == [] and fake.batches == [] and set(fake.runs) == {"a", "x", "y"}
