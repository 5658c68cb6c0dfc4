"""resume.prepare on hand-made stores of every relative age; the atomic state copies; a failed start leaves nothing.

The random-kill chain through real searches is tests/test_resume_kills.py; these tests pin each rule of the
reconciliation on stores built by hand, so that a case the random kills rarely hit is still checked.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import optuna
import pytest
import ray.cloudpickle as cloudpickle
from mlflow.tracking import MlflowClient

from sde_search import resume
from sde_search.runfolder import RunInfo

optuna.logging.set_verbosity(optuna.logging.ERROR)
DIST = {"x": optuna.distributions.CategoricalDistribution(["a", "b", "c", "d", "e"])}


def _tune_trial(trial_id: str, status: str) -> list[str]:
    state = {"trial_id": trial_id, "status": status, "relative_logdir": f"trainable_{trial_id}_1_x=a"}
    return [json.dumps(state), json.dumps({"last_result": {}})]


def _result(report: int, progress: float, score: float) -> dict:
    return {"report": report, "progress": progress, "score": score, "training_iteration": report}


def _stores(tmp_path: Path) -> tuple[RunInfo, MlflowClient, dict[str, str]]:
    """Stores as a kill leaves them: Tune's snapshot older than the study, the result log and MLflow.

    Tune: A and B RUNNING, C TERMINATED. Study: A COMPLETE (finished after the snapshot), B RUNNING, C RUNNING
    (its finish never reached the study), D RUNNING and E COMPLETE (both started after the snapshot).
    """
    run_dir = tmp_path / "run"
    tune_dir = run_dir / "tune"
    tune_dir.mkdir(parents=True)
    (tune_dir / "tuner.pkl").write_bytes(pickle.dumps({}))
    (tune_dir / "searcher-state-s.pkl").write_bytes(pickle.dumps({}))
    state = {"trial_data": [_tune_trial("A", "RUNNING"), _tune_trial("B", "RUNNING"), _tune_trial("C", "TERMINATED")],
             "runner_data": {}, "stats": {}}
    (tune_dir / "experiment_state-s.json").write_text(json.dumps(state))
    limiter = {"max_concurrent": 2, "live_trials": {"A", "B"}, "num_unfinished_live_trials": 2}
    (tune_dir / "search_gen_state-s.json").write_bytes(cloudpickle.dumps({"counter": 3,
                                                                          "name:ConcurrencyLimiter": limiter}))
    results = {"A": [_result(1, 0.5, 0.1), _result(2, 1.0, 0.4)], "B": [_result(1, 0.5, 0.2)],
               "C": [_result(1, 0.5, 0.3), _result(2, 1.0, 0.5)]}
    (run_dir / "results").mkdir()
    for trial_id, rows in results.items():
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (run_dir / "results" / f"{trial_id}.jsonl").write_text(text + ('{"report": 3, "prog' if trial_id == "B"
                                                                        else ""))  # B: a line cut by the kill
    (tune_dir / "trainable_A_1_x=a").mkdir()
    (tune_dir / "trainable_A_1_x=a" / "result.json").write_text(json.dumps(results["A"][0]) + "\n")  # Tune's lag
    (tune_dir / "trainable_D_4_x=d").mkdir()  # the folder of a trial Tune never recorded

    study = optuna.create_study(study_name="s", storage=f"sqlite:///{run_dir / 'optuna.db'}", direction="maximize")
    for tune_id in "ABCDE":
        trial = study.ask(DIST)
        trial.set_user_attr(resume.TUNE_TRIAL_ATTR, tune_id)
        if tune_id in "AE":
            study.tell(trial, 0.4)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, run_name="run").info.run_id
    runs = {}
    for tune_id in "ABCD":
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "sde.kind": "trial",
                                           "trial_name": f"trainable_{tune_id}"})
        runs[tune_id] = run.info.run_id
    info = RunInfo(name="run", run_dir=str(run_dir), task_path="t.yaml", space_path="s.yaml", tracking_uri=uri,
                   experiment="t", parent_run_id=parent, study_name="s")
    return info, client, runs


def test_prepare_makes_the_three_stores_agree(tmp_path: Path) -> None:
    info, client, runs = _stores(tmp_path)
    repair = resume.prepare(info, "score")
    run_dir = Path(info.run_dir)

    assert not repair.fresh
    assert repair.finished == ["A"]  # finished after the snapshot: kept, never retrained
    assert repair.told == [2]  # C's finish reaches the study
    assert repair.orphans == [3] and repair.lost == [4]  # D started unseen; E started and finished unseen
    state = json.loads((run_dir / "tune" / "experiment_state-s.json").read_text())
    statuses = {json.loads(s)["trial_id"]: (json.loads(s)["status"], json.loads(m)["last_result"])
                for s, m in state["trial_data"]}
    assert statuses["A"] == ("TERMINATED", _result(2, 1.0, 0.4))
    assert statuses["B"][0] == "RUNNING" and statuses["C"][0] == "TERMINATED"
    limiter = cloudpickle.loads((run_dir / "tune" / "search_gen_state-s.json").read_bytes())["name:ConcurrencyLimiter"]
    assert limiter["live_trials"] == {"B"} and limiter["num_unfinished_live_trials"] == 1  # no slot held for ever
    lines = (run_dir / "tune" / "trainable_A_1_x=a" / "result.json").read_text().splitlines()
    assert [json.loads(ln)["report"] for ln in lines] == [1, 2]  # Tune's copy gets the result it missed
    assert (run_dir / "orphans" / "trainable_D_4_x=d").is_dir()
    assert not (run_dir / "tune" / "trainable_D_4_x=d").exists()

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING", "COMPLETE", "RUNNING", "COMPLETE"]
    assert study.trials[2].value == 0.5

    a = client.get_run(runs["A"])
    assert a.info.status == "FINISHED" and a.data.metrics["score"] == 0.4  # closed, with its missing results
    assert [m.step for m in client.get_metric_history(runs["A"], "progress")] == [1, 2]
    assert client.get_run(runs["B"]).info.status == "RUNNING"  # it continues, in the same run
    assert client.get_run(runs["D"]).info.lifecycle_stage == "deleted"  # a run of a trial Tune never had
    assert repair.closed_runs == 2 and repair.deleted_runs == 1  # A and C closed

    again = resume.prepare(info, "score")  # a kill during the resume itself: the same repair, nothing new broken
    assert again.told == [] and again.orphans == [3]


def test_a_kill_before_tune_saved_anything_starts_afresh(tmp_path: Path) -> None:
    info, client, runs = _stores(tmp_path)
    run_dir = Path(info.run_dir)
    (run_dir / "tune" / "experiment_state-s.json").write_text('{"trial_data": [["{\\"trial_id')  # cut mid-write
    repair = resume.prepare(info, "score")
    assert repair.fresh and not (run_dir / "tune").exists() and not (run_dir / "optuna.db").exists()
    aside = next((run_dir / "discarded").iterdir())  # set aside, not deleted
    assert (aside / "optuna.db").is_file() and (aside / "tune" / "tuner.pkl").is_file()
    assert all(client.get_run(r).info.lifecycle_stage == "deleted" for r in runs.values())


def test_state_keeper_copies_each_snapshot_atomically_and_restores_it(tmp_path: Path) -> None:
    staging, run_dir = tmp_path / "staging", tmp_path / "run"
    staging.mkdir()
    (run_dir / "tune").mkdir(parents=True)
    keeper = resume.StateKeeper(run_dir)
    for n in (1, 2):
        for name in ("experiment_state-s.json", "searcher-state-s.pkl", "search_gen_state-s.json"):
            (staging / name).write_text(f"{name} {n}")
        os.utime(staging / "experiment_state-s.json", ns=(n * 10**9, n * 10**9))
        keeper.keep(staging)
    gens = [p.name for p in (run_dir / "state").iterdir()]
    assert sorted(gens) == ["LATEST", "gen-2000000000"]  # the older generation is gone, no temporary left
    (run_dir / "tune" / "experiment_state-s.json").write_text("half")  # Tune's own copy, cut by a kill
    assert resume.restore_snapshot(run_dir)
    assert (run_dir / "tune" / "experiment_state-s.json").read_text() == "experiment_state-s.json 2"


def test_a_search_that_fails_before_any_trial_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sde_search import raynodes, search
    from sde_search.config import load_space, load_task

    root = Path(__file__).resolve().parents[1]
    task = load_task(root / "examples/demo_masa.yaml")
    space_path = root / "search_spaces/quick.yaml"
    monkeypatch.setattr(raynodes, "start", lambda address, space: 0.0)

    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("the tokenizer could not be built")

    monkeypatch.setattr(search, "execute", broken)
    options = search.SearchOptions(runs_dir=tmp_path / "runs", name="fails")
    with pytest.raises(RuntimeError):
        search.run_search(task, load_space(space_path), space_path, options)
    assert not (tmp_path / "runs" / "fails").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(task.config.name)
    assert client.search_runs([exp.experiment_id]) == []  # the parent run is deleted, not left FAILED


@pytest.mark.parametrize("name", ["../up", "a b", "-dash", "x" * 121, "."])
def test_run_names_that_cannot_be_a_folder_are_refused(name: str) -> None:
    from sde_search.config import ConfigError
    from sde_search.search import check_run_name

    with pytest.raises(ConfigError, match="--name"):
        check_run_name(name)


def test_a_runs_folder_that_is_a_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from sde_search.config import ConfigError
    from sde_search.search import check_runs_dir

    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "runs"):
        with pytest.raises(ConfigError, match="is a file, not a folder"):
            check_runs_dir(bad)
    check_runs_dir(tmp_path / "new" / "runs")  # made with the first run


def test_the_study_name_says_the_task_once() -> None:
    from sde_search.search import study_name

    assert study_name("demo_masa", "demo_masa-20261202-101500") == "sde-demo_masa-20261202-101500"
    assert study_name("demo_masa", "it") == "sde-demo_masa-it"
