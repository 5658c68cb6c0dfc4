"""The pure analysis of a finished search (analysis.py), the export of a design (export.py), the reading flag."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sde_search import analysis, export, metrics
from sde_search.analysis import TrialRow
from sde_search.config import load_task
from sde_search.design import ES_SDE, PAPER_BASELINE, Design, parse_design

ROOT = Path(__file__).resolve().parents[1]


def _row(tid: str, design: Design, score: float, ood: float = math.nan, status: str = "full") -> TrialRow:
    return TrialRow(tid, design, {}, status, {"score": score, "score_ood": ood, "step": 10.0, "time_total_s": 5.0})


ROWS = [_row("a", ES_SDE, 0.5, 0.1), _row("b", PAPER_BASELINE, 0.3, 0.4),
        _row("c", parse_design("output_format=json"), 0.4, 0.05),
        _row("d", parse_design("instruction=last,output_format=json"), 0.9, 0.0, status="stopped")]


def test_rows_round_trip_through_json(tmp_path):
    analysis.save_rows(tmp_path / "t.json", ROWS)
    back = analysis.load_rows(tmp_path / "t.json")
    assert [r.design for r in back] == [r.design for r in ROWS] and back[0].value("score") == 0.5


def test_full_budget_ranking_ignores_stopped_trials():
    assert [r.trial_id for r in analysis.full_budget(ROWS, "score")] == ["a", "c", "b"]


def test_option_effects_average_full_budget_trials_per_value():
    rows = [*ROWS, _row("e", parse_design("instruction=last"), 0.2)]
    effects = {(e.dimension, e.value): e for e in analysis.option_effects(rows, "score")}
    assert math.isclose(effects[("instruction", "first")].mean, 0.45) and effects[("instruction", "first")].n == 2
    assert effects[("instruction", "last")].n == 2  # the stopped 'last' trial is not counted
    assert ("unmentioned", "placeholder") not in effects  # a dimension that never varied is left out
    assert ("output_format", "json") not in effects  # one full-budget json trial: below the minimum n


def test_pareto_front_keeps_only_non_dominated_designs():
    front = analysis.pareto_front(ROWS)
    assert [r.trial_id for r in front] == ["a", "b"]  # c is dominated by a


def test_search_cost_against_grid():
    cost = analysis.search_cost(ROWS, steps_per_trial=10, space_size=24)
    assert cost["steps"] == 40 and cost["steps_grid"] == 240 and cost["grid_seconds_estimate"] == 120


def test_export_renders_every_split_with_the_loss_boundary(tmp_path):
    task = load_task(ROOT / "examples" / "demo_masa.yaml")
    counts = export.export(task, ES_SDE, tmp_path, {"lr": 0.003})
    assert counts["train.jsonl"] == len(task.splits["train"]) and "dev_ood.jsonl" in counts
    first = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    assert first["loss_start"] == len(first["prompt"])  # ES-SDE trains on the answer only
    mi = export.export(task, parse_design("prompt_loss=include"), tmp_path / "mi")
    assert json.loads((tmp_path / "mi" / "train.jsonl").read_text().splitlines()[0])["loss_start"] == 0
    assert mi["train.jsonl"] == counts["train.jsonl"]
    assert "lr: 0.003" in (tmp_path / "design.yaml").read_text()


@pytest.mark.parametrize(("reads", "flag"), [(1.0, "yes"), (0.0, "no"), (math.nan, "-")])
def test_reading_flag_shows_the_trial_s_own_test(reads: float, flag: str) -> None:
    from sde_search.report import reading_flag

    row = TrialRow("t", ES_SDE, {}, "full", {"score": 0.5, "reads_input": reads})
    assert reading_flag(row) == flag


def _write_outputs(path: Path, golds: list[dict], parsed: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": str(i), "gold": g, "output": "", "parsed": p, "errors": []}) + "\n"
                            for i, (g, p) in enumerate(zip(golds, parsed, strict=True))))


def test_test_set_margin_over_the_fixed_answer(tmp_path):
    from sde_search.report import versus_fixed

    task = load_task(ROOT / "examples" / "demo_masa.yaml", ["data.max_train=100", "data.max_test=60"])
    golds = [task.gold(r, "test_id") for r in task.splits["test_id"]]
    fixed = task.fixed_answer("test_id")
    assert set(fixed) == set(task.slots) and all(len(v) == 1 for v in fixed.values())
    _write_outputs(tmp_path / "outputs" / "perfect.test_id.jsonl", golds, golds)
    _write_outputs(tmp_path / "outputs" / "parrot.test_id.jsonl", golds, metrics.same_answer(fixed, golds))
    reads = versus_fixed(task, tmp_path, "perfect", "test_id")
    assert reads is not None and reads.records == len(golds) and reads.low > 0  # a perfect answer reads the input
    parrot = versus_fixed(task, tmp_path, "parrot", "test_id")
    assert parrot is not None and parrot.delta == 0 and not parrot.real  # the fixed answer itself: no gain
    assert versus_fixed(task, tmp_path, "missing", "test_id") is None


def test_pareto_front_and_ood_ranking_leave_out_unmeasured_ood_splits():
    rows = [TrialRow("a", ES_SDE, {}, "full", {"score": 0.6, "score_ood": 0.0, "measured_ood": 0.0}),
            TrialRow("b", ES_SDE, {}, "full", {"score": 0.5, "score_ood": 0.2, "measured_ood": 1.0}),
            TrialRow("c", ES_SDE, {}, "full", {"score": 0.4, "score_ood": 0.1, "measured_ood": 1.0})]
    assert [r.trial_id for r in analysis.pareto_front(rows)] == ["b"]
    assert [r.trial_id for r in analysis.full_budget(rows, "score_ood")] == ["b", "c"]


def test_effects_at_the_common_report_count_stopped_trials_too():
    def row(tid: str, design: Design, status: str, scores: list[float]) -> TrialRow:
        return TrialRow(tid, design, {}, status, {"score": scores[-1]},
                        history=[{"report": k, "score": v} for k, v in enumerate(scores, 1)])

    json_design = parse_design("output_format=json")
    rows = [row("a", ES_SDE, "full", [0.1, 0.6]), row("b", parse_design("label_style=number"), "full", [0.3, 0.5]),
            row("c", json_design, "stopped", [0.0]), row("d", parse_design("output_format=json,label_style=number"),
                                                          "stopped", [0.2])]
    at, effects = analysis.effects_at_common_report(rows, "score")
    assert at == 1
    fmt = {e.value: e for e in effects if e.dimension == "output_format"}
    assert fmt["json"].n == 2 and fmt["json"].mean == pytest.approx(0.1) and fmt["lines"].mean == pytest.approx(0.2)
    survivors = {(e.dimension, e.value) for e in analysis.option_effects(rows, "score")}
    assert ("output_format", "json") not in survivors  # no json trial survived: survivorship, shown above
