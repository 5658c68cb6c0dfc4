"""From a finished search to a decision: report, export, robust, warm start, train --full, the notebook.

All run against the session's small real search (``small_search`` in conftest.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MACHINERY, NO_SEED_STAGE, ROOT, search_cmd, search_env

pytestmark = pytest.mark.slow


def _sde(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sde_search.cli", *args], cwd=cwd, env=search_env(cwd),
                          capture_output=True, text=True, timeout=timeout)


def _parent(runs: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.get_experiment_by_name("masa_fixed")
    return client, exp, client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")[0]


def test_report_files_sections_and_mlflow_artifacts(small_search):
    runs, _ = small_search
    run = runs / "it"
    text = (run / "report.md").read_text()
    for section in ("## Cost of the search", "## Leaderboard (full budget", "## Stopped early",
                    "## Seed stage: 2 training seeds", "## Per-option effects", "## Figures", "majority acc",
                    "## Cost per design", "Method: difference of the mean scores", "exhaustive grid", "fixed answer",
                    "survivors only", "No importance table: "):
        assert section in text, section
    assert text.splitlines()[2].startswith("**")  # the verdict's headline comes first
    # OOD: a front only over measured splits, else the report says they were not measured
    assert ("## ID / OOD Pareto front" in text) != ("OOD not measured for" in text and "Pareto" not in text)
    for png in ("leaderboard.png", "curves.png", "effects.png"):
        assert (run / "plots" / png).stat().st_size > 1000, png
    html = (run / "plots" / "optuna.html").read_text()  # self-contained: plotly.js inline, no sibling script
    assert "Optimization history" in html and "plotly" in html and not (run / "plots" / "plotly.min.js").exists()
    rows = json.loads((run / "trials.json").read_text())
    assert len(rows) == 6 and all(r["history"] for r in rows)
    client, _, parent = _parent(runs, "it")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "best_design.yaml", "trials.csv", "plots", "verdict.json"} <= artifacts
    assert "reads_input" in parent.data.metrics and "ray_init_s" in parent.data.metrics
    summary = json.loads((run / "summary.json").read_text())
    assert parent.data.tags["sde.verdict"] == summary["headline"] and summary["headline"]  # the verdict in MLflow
    assert parent.data.tags["sde.reads_input"] == str(summary["reads_input"]).lower()


def test_report_command_rebuilds_the_same_report(small_search):
    runs, _ = small_search
    before = (runs / "it" / "report.md").read_text()
    proc = _sde("report", "it", "--runs-dir", str(runs), cwd=runs.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (runs / "it" / "report.md").read_text() == before
    assert "## Leaderboard" in proc.stdout


def test_report_rescore_runs_the_seed_stage_again(small_search, tmp_path):
    runs, _ = small_search
    copy = tmp_path / "runs"
    shutil.copytree(runs / "it", copy / "it")  # its checkpoints stay where the search wrote them
    before = json.loads((copy / "it" / "verdict.json").read_text())
    (copy / "it" / "verdict.json").unlink()  # as if the search had been killed during the seed stage
    shutil.rmtree(copy / "it" / "outputs")
    proc = _sde("report", "it", "--runs-dir", str(copy), "--rescore", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = json.loads((copy / "it" / "verdict.json").read_text())
    assert [c["short"] for c in after["candidates"]] == [c["short"] for c in before["candidates"]]
    for a, b in zip(after["candidates"], before["candidates"], strict=True):  # seeded: the same runs again
        assert a["splits"]["test_id"]["accuracy_mean"] == pytest.approx(b["splits"]["test_id"]["accuracy_mean"],
                                                                        abs=0.05)
    assert len(list((copy / "it" / "seeds").glob("*.json"))) == sum(len(c["seeds"]) for c in after["candidates"])
    assert (copy / "it" / "outputs" / "winner.test_id.jsonl").exists()
    assert "## Seed stage" in (copy / "it" / "report.md").read_text()


def test_report_of_a_missing_run_is_a_clear_error(small_search):
    runs, _ = small_search
    proc = _sde("report", "nope", "--runs-dir", str(runs), cwd=runs.parent)
    assert proc.returncode == 2 and "nope: no search run there" in proc.stderr and "Traceback" not in proc.stderr


def test_export_writes_design_and_rendered_sets(small_search, tmp_path):
    runs, _ = small_search
    proc = _sde("export", "it", "--runs-dir", str(runs), "--out", str(tmp_path / "exp"), cwd=runs.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    best = (runs / "it" / "best_design.yaml").read_text()
    design = (tmp_path / "exp" / "design.yaml").read_text()
    assert best.split("train:")[0].strip() in design  # the winner's design block
    lines = (tmp_path / "exp" / "train.jsonl").read_text().splitlines()
    all_train = (ROOT / "examples/data/masa/train.jsonl").read_text().splitlines()
    assert len(lines) == len(all_train)  # every record, not the search's max_train
    first = json.loads(lines[0])
    assert first["loss_start"] in (0, len(first["prompt"])) and first["target"]
    assert (tmp_path / "exp" / "dev.jsonl").exists()


def test_train_full_saves_an_adapter(tmp_path):
    design = tmp_path / "d.yaml"
    design.write_text("design: {instruction: first, output_format: lines}\n")
    proc = _sde("train", "--task", str(ROOT / "examples/demo_masa.yaml"), "--design", str(design), "--full",
                "--set", "train.epochs=1", "--set", "train.reports_per_epoch=1", "--out", str(tmp_path / "final"),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "final" / "adapter" / "adapter_config.json").exists()
    assert "records" in proc.stdout and "adapter saved" in proc.stdout


def test_robust_logs_a_table_and_nested_runs(small_search):
    runs, _ = small_search
    proc = _sde("robust", "it", "--runs-dir", str(runs), "--top", "2", "--no-retrain", cwd=runs.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (runs / "it" / "robust.md").read_text()
    assert table.count("\n| ") >= 2 and "sampling (5 seeds)" in table
    results = json.loads((runs / "it" / "robust.json").read_text())
    from sde_search.analysis import full_budget, load_rows

    measured = {r.design for r in full_budget(load_rows(runs / "it" / "trials.json"), "score") if r.checkpoint}
    assert len(results) == min(2, len(measured)) >= 1 and all(r["paraphrases"] == 2 for r in results)
    client, exp, parent = _parent(runs, "it")
    robust = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                "and tags.`sde.kind` = 'robust'")
    assert len(robust) == len(results) and all("sampling_mean" in r.data.metrics for r in robust)


def test_warm_start_enqueues_the_earlier_winner(small_search):
    """The warm designs are the study's first trials, enqueued (not sampled), and the only ones enqueued.

    The space has no baselines here: ES-SDE and the paper's baseline are always enqueued, so with them an earlier
    winner that is one of them would be tried whether or not the warm start did anything.
    """
    import optuna

    from sde_search.sampler import warm_designs

    runs, _ = small_search
    warm = warm_designs(runs, ["it"])
    summary = json.loads((runs / "it" / "summary.json").read_text())
    assert warm  # the earlier search has full-budget designs
    trials = max(3, len(warm) + 1)  # one sampled trial after the warm ones (n_startup_trials is 2)
    cmd = [a.replace("num_samples=6", f"num_samples={trials}") for a in search_cmd(runs, "--name", "warm")]
    # what trials learn and the seed stage are not what this tests: few records, the smallest seed stage
    cmd += ["--set", "space.baselines=[]", "--set", "space.asha.enabled=false", "--set", "train.epochs=1",
            *MACHINERY, *NO_SEED_STAGE, "--warm-start", "it"]
    proc = subprocess.run(cmd, cwd=runs.parent, env=search_env(runs.parent), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "warm start:" in proc.stdout
    run = runs / "warm"
    study = optuna.load_study(study_name=json.loads((run / "run.json").read_text())["study_name"],
                              storage=f"sqlite:///{run / 'optuna.db'}")
    first = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert len(first) == trials
    enqueued = [t.system_attrs.get("fixed_params") for t in first]
    assert all(enqueued[: len(warm)]) and not any(enqueued[len(warm):]), enqueued
    for design, params in zip(warm, enqueued, strict=False):  # in warm_designs' order: the earlier winner first
        assert {k: v for k, v in params.items() if k.startswith("design.")} == \
            {k: v for k, v in design.to_params().items() if k in params}
    if summary.get("winner"):  # the seed stage's winner, when it trained at full budget in the search
        rows = json.loads((runs / "it" / "trials.json").read_text())
        winner = next(r for r in rows if r["trial_id"] == summary["winner"])
        assert {k: v for k, v in enqueued[0].items() if k.startswith("design.")}.items() <= winner["design"].items()


def test_notebook_runs_headless_on_the_search(small_search):
    import nbclient
    import nbformat

    runs, _ = small_search
    nb = nbformat.read(ROOT / "notebooks" / "analyse_search.ipynb", as_version=4)
    import os

    os.environ["SDE_RUN_DIR"] = str(runs / "it")
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        del os.environ["SDE_RUN_DIR"]
    text = json.dumps([c.get("outputs", []) for c in nb.cells])
    assert "nested runs under the parent run" in text and "Traceback" not in text


def test_credentials_never_reach_output_or_mlflow(small_search):
    """The search ran with a fake HF token and tracking password in its environment: neither may leak."""
    from conftest import SECRETS

    runs, proc = small_search
    client, exp, parent = _parent(runs, "it")
    runs_ = client.search_runs([exp.experiment_id], "", max_results=500)
    texts = [proc.stdout, proc.stderr, *(json.dumps([r.data.params, r.data.tags]) for r in runs_)]
    texts += [p.read_text(errors="replace") for p in (runs / "it").glob("*") if p.is_file() and p.suffix in
              (".md", ".json", ".yaml", ".csv", ".log")]
    for secret in SECRETS.values():
        assert not any(secret in t for t in texts)
