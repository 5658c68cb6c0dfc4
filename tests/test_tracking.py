"""What a search writes to MLflow: run names, the metrics kept and their names, steps, rounding, telemetry, the UI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sde_search import tracking
from sde_search.design import ES_SDE, Design

# One report of a trial as Tune hands it to the callbacks (keys of a real result.json of the test search).
RESULT: dict[str, Any] = {
    "kappa": 4.50394736e-16, "accuracy": 0.421875, "score": 4.50394736e-16, "score_ood": 0.15533980582524273,
    "format_error_rate": 1.0, "measured": 0.0, "n_eval": 16.0, "train_loss": 0.9839027065497178, "progress": 1.0,
    "step": 25.0, "epoch": 1.0, "report": 2.0, "train_tokens": 36995.0, "fit_s": 3.2847040400010883,
    "asha_score": 0.0, "done": False, "should_checkpoint": True, "training_iteration": 2, "trial_id": "433c99d1",
    "date": "2026-12-02_19-49-01", "timestamp": 1796241085, "time_this_iter_s": 1.69, "time_total_s": 3.34,
    "pid": 5163, "hostname": "box", "node_ip": "127.0.0.1", "time_since_restore": 3.34,
    "iterations_since_restore": 2, "checkpoint_dir_name": "checkpoint_000001", "experiment_tag": "1_design=x",
    "config": {"design.output_format": "lines", "train.lr": 1e-3},
}


def test_only_the_projects_metrics_are_logged_under_their_names() -> None:
    out = tracking.trial_metrics(RESULT)
    assert set(out) == {"kappa", "accuracy", "score", "score_ood", "format_error_rate", "measured", "n_eval",
                        "train_loss", "progress", "optimizer_step", "epoch", "report", "train_tokens", "fit_s"}
    assert out["optimizer_step"] == 25.0 and "step" not in out  # MLflow's own step axis is the report number
    assert out["kappa"] == 0.0 and out["score"] == 0.0  # float noise is not shown as 4.5e-16
    assert out["fit_s"] == 3.2847 and out["score_ood"] == 0.15534 and out["train_tokens"] == 36995.0
    assert all(isinstance(v, float) for v in out.values())


def test_every_key_ray_adds_is_left_out() -> None:
    from ray.tune.result import AUTO_RESULT_KEYS

    assert set(AUTO_RESULT_KEYS) <= tracking.RAY_KEYS
    assert not {"done", "should_checkpoint", "trial_id", "asha_score"} & set(tracking.trial_metrics(RESULT))


@pytest.mark.parametrize(("value", "shown"), [(4.50394736e-16, 0.0), (-1e-17, 0.0), (0.1 + 0.2, 0.3),
                                              (3.2847040400010883, 3.2847), (123456789.0, 123456789.0),
                                              (0.999999999, 1.0), (-0.25, -0.25), (1.5e-7, 1.5e-7)])
def test_values_are_rounded_where_noise_would_mislead(value: float, shown: float) -> None:
    assert tracking.tidy(value) == shown
    assert str(tracking.tidy(value)) != "-0.0"


def test_nan_passes_through() -> None:
    assert tracking.tidy(float("nan")) != tracking.tidy(float("nan"))


def test_the_step_is_the_report_number() -> None:
    assert tracking.report_step({"report": 4.0, "training_iteration": 1}) == 4  # a resumed trial's own count
    assert tracking.report_step({"training_iteration": 3}) == 3
    assert tracking.report_step({"done": True}) is None


def test_runs_are_named_by_design() -> None:
    config = ES_SDE.to_params()
    assert tracking.run_name(config, {}) == "first/exclude/lines/placeholder/text/none"
    fixed = {"design.prompt_loss": "include", "train.epochs": 3}
    config = {"design.output_format": "json", "train.lr": 0.0031234, "train.lora_rank": 8}
    assert tracking.run_name(config, fixed) == "first/include/json/placeholder/text/none lora_rank=8 lr=0.00312"
    assert Design.from_params({**fixed, **config}).short() in tracking.run_name(config, fixed)


def test_backfill_logs_what_the_callback_logs(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = c.create_run(c.create_experiment("x"))
    first = {**RESULT, "report": 1.0, "training_iteration": 1}
    assert tracking.backfill(c, run.info.run_id, [first, RESULT]) == 2
    assert tracking.backfill(c, run.info.run_id, [RESULT]) == 0  # steps already there are not logged again
    metrics = c.get_run(run.info.run_id).data.metrics
    assert set(metrics) == set(tracking.trial_metrics(RESULT))
    assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "kappa")) == [1, 2]


class _Trial:
    """What the tracking callback reads of a Tune trial."""

    def __init__(self, trial_id: str, config: dict[str, Any]):
        self.trial_id, self.config = trial_id, config

    def __str__(self) -> str:
        return f"trainable_{self.trial_id}"


def test_the_callback_names_tags_and_steps_a_trial_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from sde_search.tracking import TrialTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    parent = c.create_run(c.create_experiment("demo")).info.run_id
    cb = TrialTracker(tracking_uri=uri, experiment_name="demo", fixed={"design.reasoning": "cot"},
                      tags={"mlflow.parentRunId": parent, "sde.kind": "trial"})
    cb.setup()
    trial = _Trial("433c99d1", {"design.instruction": "last", "design.output_format": "natural"})
    cb.log_trial_start(trial)
    for k in (1, 2):
        cb.log_trial_result(k, trial, {**RESULT, "report": float(k), "training_iteration": k + 5})
    cb.log_trial_end(trial)
    run = c.search_runs([c.get_experiment_by_name("demo").experiment_id], "tags.`sde.kind` = 'trial'")[0]
    assert run.info.run_name == "last/exclude/natural/placeholder/text/cot"
    assert run.data.tags["sde.trial_id"] == "433c99d1"
    assert run.data.tags["trial_name"] == "trainable_433c99d1"  # what --resume matches runs on
    assert run.data.tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED"
    assert set(run.data.metrics) == set(tracking.trial_metrics(RESULT))
    assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "score")) == [1, 2]  # reports, not Tune's
    assert run.data.params == {"design.instruction": "last", "design.output_format": "natural"}


def test_ui_prints_the_runs_view_of_each_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    from sde_search import cli, cli_ui

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    ids = {name: c.create_experiment(name) for name in ("masa", "ner", "unused")}
    for name in ("masa", "ner"):
        c.create_run(ids[name])
    started: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(cli_ui, "run_server", lambda cmd, env: started.append((list(cmd), dict(env))) or 0)
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    assert cli.main(["ui", "--runs-dir", str(tmp_path), "--port", "5123"]) == 0
    out = capsys.readouterr().out
    for name in ("masa", "ner"):
        assert f"{name}: http://127.0.0.1:5123/#/experiments/{ids[name]}/runs?workflowType=machine_learning" in out
    assert "unused" not in out and "Default" not in out  # experiments without runs are not listed
    (cmd, env), = started
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert cmd[cmd.index("--port") + 1] == "5123"


def test_telemetry_is_off_unless_the_user_turns_it_on() -> None:
    from sde_search import cli_ui, raynodes

    assert cli_ui.ui_env({})["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert cli_ui.ui_env({"MLFLOW_DISABLE_TELEMETRY": "false"})["MLFLOW_DISABLE_TELEMETRY"] == "false"
    env: dict[str, str] = {"MLFLOW_DISABLE_TELEMETRY": "false"}
    tracking.telemetry_off(env)
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "false"
    assert "MLFLOW_DISABLE_TELEMETRY" in raynodes.WORKER_ENV  # the trials' processes get it too


@pytest.mark.parametrize("module", ["sde_search.search", "sde_search.tracking"])
def test_the_driver_starts_mlflow_without_its_telemetry_client(module: str, tmp_path: Path) -> None:
    """MLflow starts its telemetry client when imported, unless the variable is set by then.

    The child runs outside pytest and CI as far as MLflow can tell, so that only the variable turns it off.
    """
    ci = {"PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"}
    env = {k: v for k, v in os.environ.items() if k not in ci} | {"HOME": str(tmp_path)}
    code = (f"import os, {module}, mlflow.telemetry as t; "
            "print(__import__('json').dumps([os.environ.get('MLFLOW_DISABLE_TELEMETRY'), "
            "t.get_telemetry_client() is None]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["true", True]


def test_optuna_plots_are_one_self_contained_html(tmp_path: Path) -> None:
    import optuna

    from sde_search import plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + (t.suggest_categorical("f", ["a", "b"]) == "a"),
                   n_trials=8)
    (tmp_path / "plotly.min.js").write_text("stale")  # what earlier versions wrote beside their HTML
    (tmp_path / "optuna_history.html").write_text("stale")
    paths = plots.optuna_html(study, tmp_path)
    assert paths == [tmp_path / "optuna.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.html"]
    html = paths[0].read_text()
    assert html.count('class="plotly-graph-div"') == 3  # history, importances, slices
    assert not re.search(r"<script[^>]*\bsrc=", html)  # nothing loaded from elsewhere: plotly.js is inline
    assert 3e6 < paths[0].stat().st_size < 8e6  # plotly.js once, about 4.8 MB


# The metrics of a trial run of the test search (aspect sentiment, OOD measured), and those span tasks add.
LOGGED = (
    "accuracy", "accuracy_empty", "accuracy_fixed", "baseline_empty", "baseline_fixed", "distinct_predictions",
    "epoch", "fit_s", "format_error_rate", "gen_s", "kappa", "measured", "n_eval", "optimizer_step", "progress",
    "reads_input", "reads_low_accuracy", "reads_low_score", "repair_rate", "report", "score", "score_mean",
    "score_ood", "tokens_per_sample", "train_loss", "train_s", "train_tokens", "f1", "f1_soft", "precision",
    "precision_soft", "recall", "recall_soft",
)


def test_every_logged_metric_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "mlflow.md").read_text()
    table = doc[doc.index("## Trial metrics"):doc.index("## Tags")]
    documented = set(re.findall(r"^\| (`[a-z0-9_]+`(?:, `[a-z0-9_]+`)*) \|", table, re.M))
    names = {n.strip("`") for row in documented for n in row.split(", ")}
    assert sorted({k.removesuffix("_ood") for k in LOGGED} - names) == []  # `_ood`: the same on OOD
    assert not names & tracking.RAY_KEYS


def test_the_parent_runs_final_metrics_and_tags_come_from_rows_and_verdict() -> None:
    from sde_search.analysis import TrialRow

    rows = [TrialRow(t, ES_SDE, {}, s, {}) for t, s in (("a", "full"), ("b", "full"), ("c", "stopped"))]
    measured = {"measured": True, "score_mean": 0.5}
    verdict = {"winner": "w", "reads_input": True, "headline": "w reads the input", "candidates": [
        {"short": "w", "roles": ["top1", "es_sde"], "splits": {"eval_id": measured, "test_ood": {"measured": False}}},
        {"short": "p", "roles": ["paper_baseline"], "splits": {"test_id": {"measured": True, "score_mean": 0.1}}}]}
    metrics, tags = tracking.final_metrics(rows, verdict, wall_s=60.0, ray_init_s=2.0)
    assert metrics == {"wall_s": 60.0, "ray_init_s": 2.0, "reads_input": 1.0, "trials_full": 2.0,
                       "trials_stopped": 1.0, "trials_failed": 0.0, "winner_eval_id_score_mean": 0.5,
                       "es_sde_eval_id_score_mean": 0.5, "paper_baseline_test_id_score_mean": 0.1}
    assert tags == {"sde.verdict": "w reads the input", "sde.reads_input": "true", "sde.winner": "w"}
    metrics, tags = tracking.final_metrics(rows, {}, wall_s=1.0, ray_init_s=0.5)
    assert metrics["reads_input"] == 0.0 and tags["sde.winner"] == "-" and "did not run" in tags["sde.verdict"]


def test_a_failed_tracking_step_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    def fails(x: int) -> int:
        raise ConnectionError(f"store {x} away")

    with caplog.at_level("WARNING", logger="sde_search"):
        assert tracking.tracked("closing the parent run", fails, 7) is None
        assert tracking.tracked("adding", lambda a, b: a + b, 1, 2) == 3
    assert caplog.messages == ["warning: MLflow step failed (closing the parent run): ConnectionError: store 7 away"]
