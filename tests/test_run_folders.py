"""Broken run folders: ``report``, ``export``, ``robust``, ``train --design``, ``--warm-start`` and ``--resume``.

A run folder (``runs/<name>/``) is built by hand here in the shapes a search writes (``run.json``,
``trials.json``, ``summary.json``, ``verdict.json``, ``best_design.yaml``), so no search has to run. Each case
breaks one file (cut short, wrong type, a key missing, deleted) and runs the command in-process. Every case either
ends with exit 2 and ``error:`` lines naming the file, or (for what a report can do without) rebuilds the report and
says what is missing. Nothing may be written when a command is refused.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sde_search import analysis, cli
from sde_search.analysis import TrialRow
from sde_search.config import ConfigError
from sde_search.design import Design

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "examples" / "demo_masa.yaml"
SPACE = ROOT / "search_spaces" / "quick.yaml"
DESIGNS = [Design(output_format="lines"), Design(instruction="last", output_format="natural"),
           Design(output_format="json", unmentioned="omit"), Design(label_style="number")]


def _row(i: int, design: Design, status: str, score: float, checkpoint: str | None) -> TrialRow:
    reports = 4 if status == "full" else 2
    metrics = {"score": score, "kappa": score, "accuracy": 0.5 + score / 2, "accuracy_fixed": 0.47,
               "baseline_fixed": 0.0, "measured": 1.0, "score_ood": score / 2, "measured_ood": 1.0,
               "format_error_rate": 0.0, "format_error_rate_ood": 0.1, "repair_rate": 0.0,
               "distinct_predictions": 20.0, "distinct_predictions_ood": 12.0, "reads_input": 1.0,
               "progress": reports / 4, "report": float(reports), "step": 25.0 * reports, "train_s": 3.0 + i,
               "gen_s": 1.0, "fit_s": 4.5, "time_total_s": 5.0, "tokens_per_sample": 90.0, "trial_id": f"t{i}"}
    history = [{"report": float(k), "step": 25.0 * k, "score": score * k / reports} for k in range(1, reports + 1)]
    return TrialRow(f"t{i}", design, {}, status, metrics, history=history, checkpoint=checkpoint)


def make_run(runs: Path, name: str = "it") -> Path:
    """A finished run folder as a search leaves it (no verdict: its seed stage did not run)."""
    folder = runs / name
    (folder / "seeds").mkdir(parents=True)
    (folder / "tune").mkdir()
    info = {"name": name, "run_dir": str(folder), "task_path": str(TASK), "space_path": str(SPACE),
            "tracking_uri": f"sqlite:///{runs / 'mlflow.db'}", "experiment": "demo_masa",
            "parent_run_id": "0" * 32, "study_name": f"sde-demo_masa-{name}", "overrides": []}
    (folder / "run.json").write_text(json.dumps(info, indent=2))
    rows = [_row(i, d, "full" if i < 3 else "stopped", 0.2 + 0.1 * i, None) for i, d in enumerate(DESIGNS)]
    analysis.save_rows(folder / "trials.json", rows)
    summary = {"name": name, "space_path": str(SPACE), "metric": "score", "wall_s": 60.0, "ray_init_s": 2.0,
               "max_concurrent": 2, "steps_per_trial": 100, "winner": None, "winner_design": None,
               "reads_input": False, "headline": "", "real_gains": [], "seed_stage_s": 0.0}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    best = {"design": {k.removeprefix("design."): v for k, v in DESIGNS[2].to_params().items()}, "train": {}}
    (folder / "best_design.yaml").write_text(yaml.safe_dump(best, sort_keys=False))
    (folder / "report.md").write_text("# an earlier report\n")
    (folder / "robust.json").write_text("[\"earlier results\"]")
    (folder / "optuna.db").write_bytes(b"")
    return folder


# ---------------------------------------------------------------- how a file is broken


def _cut(name: str) -> Callable[[Path], None]:
    def go(folder: Path) -> None:
        text = (folder / name).read_text()
        (folder / name).write_text(text[: len(text) // 2])
    return go


def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def go(folder: Path) -> None:
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return go


def _edit(name: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def go(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps(change(data)))
    return go


def _pop(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda d: {k: v for k, v in d.items() if k != key}


def _put(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda d: {**d, key: value}


def _rows(change: Callable[[dict[str, Any]], Any]) -> Callable[[list[dict[str, Any]]], list[Any]]:
    return lambda rows: [change(rows[0]), *rows[1:]]


def _delete(name: str) -> Callable[[Path], None]:
    def go(folder: Path) -> None:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return go


def _folder_instead(name: str) -> Callable[[Path], None]:
    def go(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()
    return go


@dataclass(frozen=True)
class Case:
    """One broken run folder: how it is broken, the command, and what it must say.

    ``expect`` is a substring of stderr (exit 2) or, with ``ok``, of stdout (exit 0: the report is rebuilt).
    """

    id: str
    breaks: Callable[[Path], None] | None
    args: tuple[str, ...]
    expect: str
    ok: bool = False


REPORT = ("report", "it")
ROBUST = ("robust", "it", "--top", "1", "--no-retrain")
CASES = [
    # run.json: every command reads it first
    Case("run_json_cut", _cut("run.json"), REPORT, "run.json: not valid JSON"),
    Case("run_json_empty", _write("run.json", ""), REPORT, "run.json: the file is empty"),
    Case("run_json_not_utf8", _write("run.json", b"\xff\xfe{\x00"), REPORT, "run.json: not UTF-8"),
    Case("run_json_list", _write("run.json", "[]"), REPORT, "run.json: expected a JSON object"),
    Case("run_json_no_task_path", _edit("run.json", _pop("task_path")), REPORT, "run.json: task_path: missing"),
    Case("run_json_task_path_number", _edit("run.json", _put("task_path", 5)), REPORT,
         "run.json: task_path: expected a string, got an integer"),
    Case("run_json_overrides_string", _edit("run.json", _put("overrides", "train.lr=1")), REPORT,
         "run.json: overrides: expected a list of strings"),
    Case("run_json_task_gone", _edit("run.json", _put("task_path", "/nonexistent/task.yaml")), REPORT,
         "run.json: task_path: /nonexistent/task.yaml: file not found"),
    Case("run_json_no_parent_run", _edit("run.json", _pop("parent_run_id")), ROBUST,
         "run.json: parent_run_id: missing"),
    Case("run_json_folder", _folder_instead("run.json"), REPORT, "no search run there"),
    Case("run_json_deleted", _delete("run.json"), REPORT, "no search run there"),
    # trials.json
    Case("trials_json_cut", _cut("trials.json"), REPORT, "trials.json: not valid JSON"),
    Case("trials_json_empty", _write("trials.json", "\n"), REPORT, "trials.json: the file is empty"),
    Case("trials_json_object", _write("trials.json", "{}"), REPORT, "trials.json: expected a JSON list"),
    Case("trials_json_row_number", _write("trials.json", "[1]"), REPORT,
         "trials.json: [0]: expected a JSON object"),
    Case("trials_json_no_trial_id", _edit("trials.json", _rows(_pop("trial_id"))), REPORT,
         "trials.json: [0].trial_id: missing"),
    Case("trials_json_bad_status", _edit("trials.json", _rows(_put("status", "done"))), REPORT,
         "trials.json: [0].status: 'done' is not one of full, stopped, failed"),
    Case("trials_json_bad_design", _edit("trials.json", _rows(_put("design", {"design.output_format": "xml"}))),
         REPORT, "trials.json: [0].design: design.output_format: 'xml' is not one of"),
    Case("trials_json_metrics_list", _edit("trials.json", _rows(_put("metrics", []))), REPORT,
         "trials.json: [0].metrics: expected a JSON object"),
    Case("trials_json_history_text", _edit("trials.json", _rows(_put("history", [{"report": "one"}]))), REPORT,
         "trials.json: [0].history[0].report: expected a number"),
    Case("trials_json_deep", _write("trials.json", "[" * 100_000), REPORT, "trials.json: nested too deeply"),
    Case("trials_json_folder", _folder_instead("trials.json"), REPORT, "trials.json: is a folder"),
    Case("trials_json_deleted", _delete("trials.json"), REPORT, "the search has not finished (no trials.json)"),
    Case("trials_json_cut_robust", _cut("trials.json"), ROBUST, "trials.json: not valid JSON"),
    # summary.json
    Case("summary_json_cut", _cut("summary.json"), REPORT, "summary.json: not valid JSON"),
    Case("summary_json_list", _write("summary.json", "[1, 2]"), REPORT, "summary.json: expected a JSON object"),
    Case("summary_json_no_metric", _edit("summary.json", _pop("metric")), REPORT, "summary.json: metric: missing"),
    Case("summary_json_bad_metric", _edit("summary.json", _put("metric", "loss")), REPORT,
         "summary.json: metric: 'loss' is not one of score, score_ood, score_mean"),
    Case("summary_json_wall_text", _edit("summary.json", _put("wall_s", "60 s")), REPORT,
         "summary.json: wall_s: expected a number or null, got a string"),
    Case("summary_json_deleted", _delete("summary.json"), REPORT, "summary.json was missing", ok=True),
    # verdict.json (the seed stage's result; optional)
    Case("verdict_json_cut", _write("verdict.json", '{"headline": "The win'), REPORT, "verdict.json: not valid JSON"),
    Case("verdict_json_list", _write("verdict.json", "[]"), REPORT, "verdict.json: expected a JSON object"),
    Case("verdict_json_candidates_text", _write("verdict.json", '{"candidates": "none"}'), REPORT,
         "verdict.json: candidates: expected a list"),
    Case("verdict_json_winner_unknown", _write("verdict.json", json.dumps(
        {"candidates": [], "winner": "a/b", "winner_design": DESIGNS[0].to_params()})), REPORT,
         "verdict.json: winner: 'a/b' is not one of the candidates"),
    Case("verdict_json_absent", None, REPORT, "The seed stage did not run; no verdict.", ok=True),
    # files the report rebuilds or does without
    *[Case(f"{n.replace('.', '_')}_deleted", _delete(n), REPORT, "## Leaderboard", ok=True)
      for n in ("report.md", "best_design.yaml", "seeds", "tune", "optuna.db")],
    # export
    Case("best_design_cut", _write("best_design.yaml", "design: {instruction: fir"), ("export", "it"),
         "best_design.yaml: not valid YAML"),
    Case("best_design_list", _write("best_design.yaml", "- first\n"), ("export", "it"),
         "best_design.yaml: expected a mapping"),
    Case("best_design_train_list", _write("best_design.yaml", "design: {instruction: first}\ntrain: [1]\n"),
         ("export", "it"), "best_design.yaml: train: expected a mapping"),
    Case("best_design_value_list", _write("best_design.yaml", "design: {instruction: [first, last]}\n"),
         ("export", "it"), "best_design.yaml: design.instruction: ['first', 'last'] is not one of first, last, none"),
    Case("best_design_deleted", _delete("best_design.yaml"), ("export", "it"), "no best_design.yaml"),
    # robust
    Case("robust_no_checkpoint", None, ROBUST, "trials.json: no full-budget trial with a checkpoint to re-score"),
    Case("robust_checkpoint_gone", _edit("trials.json", lambda rows: [{**r, "checkpoint": "/nonexistent/ckpt"}
                                                                      for r in rows]), ROBUST,
         "trials.json: the checkpoints of the top trials are gone (t2: /nonexistent/ckpt)"),
]
CASE_IDS = [c.id for c in CASES]


def run_cli(args: list[str]) -> int:
    """``sde-search ARGS`` in this process; argparse's refusals (SystemExit) become their exit code."""
    try:
        return cli.main(args)
    except SystemExit as exc:
        return int(exc.code or 0)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _args(case: Case, runs: Path, tmp: Path) -> list[str]:
    args = [*case.args, "--runs-dir", str(runs)]
    return [*args, "--out", str(tmp / "export")] if case.args[0] == "export" else args


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_broken_run_folder(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_run(tmp_path / "runs")
    if case.breaks:
        case.breaks(folder)
    before = _snapshot(folder)
    code = run_cli(_args(case, tmp_path / "runs", tmp_path))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if case.ok:
        assert code == 0 and case.expect in out, err[-2000:]
        return
    assert code == 2 and case.expect in err, (code, err[-2000:])
    assert err and all(line.startswith("error: ") for line in err.splitlines()), err
    assert all(len(line) < 600 for line in err.splitlines()), err
    assert _snapshot(folder) == before and not (tmp_path / "export").exists()  # nothing written or created


def test_a_report_without_summary_json_rebuilds_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_run(tmp_path / "runs")
    (folder / "summary.json").unlink()
    assert run_cli(["report", "it", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "wall time unknown" in out and "nan" not in out.split("## Cost of the search")[1].split("##")[0]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["metric"] == "score" and summary["missing"] and summary["wall_s"] is None
    assert run_cli(["report", "it", "--runs-dir", str(tmp_path / "runs")]) == 0  # the rebuilt file reads back
    assert "summary.json was missing" in capsys.readouterr().out


def test_a_long_broken_trials_json_lists_a_bounded_number_of_problems(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_run(tmp_path / "runs")
    rows = json.loads((folder / "trials.json").read_text())
    (folder / "trials.json").write_text(json.dumps([{**rows[0], "status": "x" * 5000}] * 500))
    assert run_cli([*REPORT, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert 2 <= len(err) <= 12 and "more problems" in err[-1]
    assert all(len(line) < 600 for line in err)


# ---------------------------------------------------------------- numbers and outputs the commands refuse


@pytest.mark.parametrize("args", [("robust", "it", "--top", "0"), ("robust", "it", "--top", "-2"),
                                  ("robust", "it", "--top", "two"), ("ui", "--port", "0"), ("ui", "--port", "-1"),
                                  ("ui", "--port", "70000")], ids=lambda a: "_".join(a[-2:]))
def test_counts_and_ports_out_of_range_are_refused(args: tuple[str, ...], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_run(tmp_path / "runs")
    (tmp_path / "runs" / "mlflow.db").write_bytes(b"")
    before = _snapshot(folder)
    assert run_cli([*args, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"argument {args[-2]}:" in err
    assert "at least 1" in err or "1 to 65535" in err or "not a whole number" in err
    assert _snapshot(folder) == before  # robust.json keeps the earlier results


@pytest.mark.parametrize("where", ["file", "under_a_file", "earlier_export"])
def test_export_never_overwrites(where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path / "runs")
    out = tmp_path / "out"
    if where == "file":
        out.write_text("keep me")
    elif where == "under_a_file":
        (tmp_path / "file").write_text("keep me")
        out = tmp_path / "file" / "out"
    else:
        out.mkdir()
        (out / "train.jsonl").write_text("keep me")
    before = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert run_cli(["export", "it", "--runs-dir", str(tmp_path / "runs"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: --out {out}: " in err and "Traceback" not in err
    assert "there is no --force" in err
    assert {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_export_into_a_new_folder_works(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path / "runs")
    assert run_cli(["export", "it", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "design.yaml").exists() and (tmp_path / "e" / "train.jsonl").exists()
    empty = tmp_path / "empty"
    empty.mkdir()  # an existing empty folder is fine: nothing in it is replaced
    assert run_cli(["export", "it", "--runs-dir", str(tmp_path / "runs"), "--out", str(empty)]) == 0


def test_ui_refuses_a_store_that_is_not_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mlflow.db").mkdir()
    assert run_cli(["ui", "--runs-dir", str(tmp_path)]) == 2
    assert "mlflow.db" in capsys.readouterr().err
    (tmp_path / "mlflow.db").rmdir()
    (tmp_path / "mlflow.db").write_text("not a database, but long enough to have a header")
    assert run_cli(["ui", "--runs-dir", str(tmp_path)]) == 2
    assert "mlflow.db: not an SQLite database" in capsys.readouterr().err


# ---------------------------------------------------------------- train --design, --warm-start and --resume


@pytest.mark.parametrize(("text", "expect"), [
    ("design: {instruction: fir", "best_design.yaml: not valid YAML"),
    ("design: {instruction: [first]}\n", "best_design.yaml: design.instruction: ['first'] is not one of first, last"),
    ("design: {instructions: first}\n", "best_design.yaml: design.instructions: not a design dimension"),
    ("design: {output_format: 'lines,reasoning=cot'}\n", "best_design.yaml: design.output_format: 'lines,reaso"),
])
def test_train_design_from_a_broken_best_design(text: str, expect: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "best_design.yaml"
    path.write_text(text)
    assert run_cli(["train", "--task", str(TASK), "--design", str(path)]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err, err


WARM = [("summary_deleted", _delete("summary.json"), "summary.json: missing, so the run's metric and winner are "
         "unknown; run `sde-search report it` first (it rebuilds summary.json)"),
        ("summary_cut", _cut("summary.json"), "summary.json: not valid JSON"),
        ("summary_no_metric", _edit("summary.json", _pop("metric")), "summary.json: metric: missing"),
        ("trials_cut", _cut("trials.json"), "trials.json: not valid JSON"),
        ("trials_bad_design", _edit("trials.json", _rows(_put("design", {"design.reasoning": 1}))),
         "trials.json: [0].design: design.reasoning: 1 is not one of")]


@pytest.mark.parametrize(("breaks", "expect"), [w[1:] for w in WARM], ids=[w[0] for w in WARM])
def test_warm_start_from_a_broken_run(breaks: Callable[[Path], None], expect: str, tmp_path: Path) -> None:
    from sde_search.sampler import warm_designs

    folder = make_run(tmp_path / "runs")
    breaks(folder)
    with pytest.raises(ConfigError) as info:
        warm_designs(tmp_path / "runs", ["it"])
    assert any(expect in p for p in info.value.problems), info.value.problems


def test_warm_start_from_a_good_run(tmp_path: Path) -> None:
    from sde_search.sampler import warm_designs

    make_run(tmp_path / "runs")
    assert warm_designs(tmp_path / "runs", ["it"], top=2) == [DESIGNS[2], DESIGNS[1]]


RESUME = [("cut", _cut("run.json"), "run.json: not valid JSON"),
          ("list", _write("run.json", "[]"), "run.json: expected a JSON object"),
          ("no_study_name", _edit("run.json", _pop("study_name")), "run.json: study_name: missing"),
          ("overrides_numbers", _edit("run.json", _put("overrides", [1])), "run.json: overrides: expected a list "
           "of strings")]


@pytest.mark.parametrize(("breaks", "expect"), [r[1:] for r in RESUME], ids=[r[0] for r in RESUME])
def test_resume_from_a_broken_run_json(breaks: Callable[[Path], None], expect: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from sde_search.runfolder import RunInfo

    folder = make_run(tmp_path / "runs")
    breaks(folder)
    with pytest.raises(ConfigError) as info:
        RunInfo.load(folder)
    assert any(expect in p for p in info.value.problems), info.value.problems
    code = run_cli(["--task", str(TASK), "--resume", "it", "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and expect in err and "Traceback" not in err, err


def test_a_resume_trains_with_the_overrides_the_search_started_with(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from sde_search import search
    from sde_search.config import load_task_and_space
    from sde_search.runfolder import RunInfo

    folder = make_run(tmp_path / "runs")
    _edit("run.json", _put("overrides", ["space.budget.num_samples=5", "train.epochs=2"]))(folder)
    info = RunInfo.load(folder)
    task, space, space_path = load_task_and_space(str(TASK), None, [])
    # no --set: the recorded ones apply (the trials of a resumed search train as the earlier ones did)
    t2, s2 = search._as_started(info, task, space, space_path, search.SearchOptions())
    assert s2.budget.num_samples == 5 and t2.config.train.epochs == 2
    assert space.budget.num_samples != 5 and task.config.train.epochs != 2
    same = search.SearchOptions(overrides=("space.budget.num_samples=5", "train.epochs=2"))
    assert search._as_started(info, task, space, space_path, same) == (task, space)
    some = search.SearchOptions(overrides=("train.epochs=2",))  # some of them repeated: all of them apply
    assert search._as_started(info, task, space, space_path, some)[1].budget.num_samples == 5
    # another value for a key: one line, exit 2, nothing started
    code = run_cli(["--task", str(TASK), "--resume", "it", "--runs-dir", str(tmp_path / "runs"),
                    "--set", "train.epochs=2", "--set", "space.budget.num_samples=7"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "--resume it: --set space.budget.num_samples=7 differs from what the search started with (--set " \
           "space.budget.num_samples=5 --set train.epochs=2)" in err, err


def test_run_info_round_trips(tmp_path: Path) -> None:
    from sde_search.runfolder import RunInfo

    folder = make_run(tmp_path / "runs")
    info = RunInfo.load(folder)
    assert info.name == "it" and info.overrides == () and info.task_path == str(TASK)


def test_a_space_file_edited_after_the_search_leaves_trials_out_of_importance(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_run(tmp_path / "runs")
    formats, places = ("lines", "json", "natural"), ("first", "last")
    rows = [_row(i, Design(output_format=formats[i % 3], instruction=places[i % 2]), "full", 0.1 + 0.05 * i, None)
            for i in range(9)]
    analysis.save_rows(folder / "trials.json", rows)
    info = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**info, "space_path": str(ROOT / "search_spaces/sde_hparams.yaml")}))
    assert run_cli([*REPORT, "--runs-dir", str(tmp_path / "runs")]) == 0  # the space now searches lr: no trial has it
    assert "Importance: 9 of 9 full-budget trials are left out" in capsys.readouterr().out


_REPORT_IMPORTS = """
import contextlib, io, json, sys
from sde_search import cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = cli.main(["report", "it", "--runs-dir", sys.argv[1]])
def loaded(name):
    return any(m == name or m.startswith(name + ".") for m in sys.modules)
print(json.dumps({"rc": rc, "heading": out.getvalue().splitlines()[0],
                  "heavy": [m for m in ("torch", "transformers", "peft", "ray", "mlflow") if loaded(m)],
                  "control": [m for m in ("sde_search.report", "sde_search.runfolder", "matplotlib") if loaded(m)]}))
"""


def test_the_report_command_imports_no_ray_mlflow_or_torch(tmp_path: Path) -> None:
    """``sde-search report RUN`` reads files and writes markdown: no training, tracking or Ray (fresh interpreter)."""
    import subprocess
    import sys

    folder = make_run(tmp_path / "runs")
    proc = subprocess.run([sys.executable, "-c", _REPORT_IMPORTS, str(tmp_path / "runs")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0 and result["heading"] == "# sde-search report: it"
    assert (folder / "report.md").read_text().startswith("# sde-search report: it")  # rebuilt, not the earlier one
    assert result["control"] == ["sde_search.report", "sde_search.runfolder", "matplotlib"]  # the check sees imports
    assert result["heavy"] == [], f"sde-search report imported {result['heavy']}"


def test_result_logs_and_tune_results_become_rows(tmp_path: Path) -> None:
    """results/<trial>.jsonl round trip (a line cut by a kill is dropped), and Tune's results as trials.json rows."""
    import pandas as pd

    from sde_search import runfolder

    assert not runfolder.has_results(tmp_path)
    runfolder.append_result(tmp_path, "t1", {"report": 1, "score": 0.25})
    runfolder.append_result(tmp_path, "t1", {"report": 2, "score": 0.5})
    with open(tmp_path / "results" / "t1.jsonl", "a") as f:
        f.write('{"report": 3, "sco')  # killed mid-line
    assert runfolder.has_results(tmp_path)
    assert runfolder.trial_results(tmp_path, "t1", "trial_t1") == [{"report": 1, "score": 0.25},
                                                                      {"report": 2, "score": 0.5}]
    (tmp_path / "tune" / "trial_t2").mkdir(parents=True)  # a search of an older version: Tune's result.json
    (tmp_path / "tune" / "trial_t2" / "result.json").write_text('{"report": 1}\n')
    assert runfolder.trial_results(tmp_path, "t2", "trial_t2") == [{"report": 1}]
    assert runfolder.trial_results(tmp_path, "t3", "trial_t3") == []

    @dataclass
    class Result:  # the attributes of a Tune result that collect reads
        metrics: dict[str, Any]
        config: dict[str, Any]
        path: str
        error: Exception | None = None
        checkpoint: Any = None
        metrics_dataframe: Any = None

    frame = pd.DataFrame([{"report": 1, "score": 0.1, "time_total_s": 3.0}, {"report": 2, "score": 0.3},
                          {"report": 2, "score": 0.4}])  # report 2 again after a resume: the last one counts
    results = [Result({"trial_id": "a", "progress": 1.0, "score": 0.4}, {"design.output_format": "json",
                                                                          "train.lr": 0.001}, "/x/a", None,
                      None, frame),
               Result({"trial_id": "b", "progress": 0.5}, {}, "/x/b"),
               Result({}, {}, "/x/trial_c", RuntimeError("Traceback ...\n\nValueError: boom\n"))]
    rows = runfolder.collect(results, {"design.instruction": "last"})
    assert [(r.trial_id, r.status) for r in rows] == [("a", "full"), ("b", "stopped"), ("trial_c", "failed")]
    assert rows[0].design == Design(instruction="last", output_format="json") and rows[0].hparams == {"lr": 0.001}
    assert rows[0].history == [{"report": 1.0, "score": 0.1}, {"report": 2.0, "score": 0.4}]
    assert rows[1].history == [] and rows[2].error == "ValueError: boom"
