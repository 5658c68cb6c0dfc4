"""``sde-search train``: the per-report table, ``--test``, and the generations it always writes.

Mistakes are checked without training. Two tiny real runs (a few seconds each on CPU, so not ``slow``) write
into one folder: the first with ``--test`` and the default ``--out``, the second without ``--test`` into that
same folder, which must then hold only that run's eval generations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sde_search import cli, generations
from sde_search.config import load_task
from sde_search.design import ES_SDE
from sde_search.render import parse, render

ROOT = Path(__file__).resolve().parents[1]
MASA = ROOT / "examples" / "demo_masa.yaml"
TINY = {"data.max_train": 16, "data.max_eval": 5, "data.max_test": 6, "train.epochs": 1,
        "train.reports_per_epoch": 1, "train.report_eval_size": 4, "train.batch_size": 8}
ROW_KEYS = {"id", "gold", "prompt", "target", "output", "parsed", "errors"}


def _sets(values: dict[str, Any]) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private tokenizer cache and offline Hugging Face."""
    monkeypatch.setenv("SDE_CACHE", str(tmp_path_factory.getbasetemp() / "sde-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------- no training


def test_test_without_test_splits_is_a_config_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = ["train", "--task", str(MASA), "--test", "--out", str(tmp_path / "out"),
            *_sets({"data.test_id": "null", "data.test_ood": "null"})]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "demo_masa.yaml: data: --test scores test_id and test_ood, but the task names neither" in err
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_a_config_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    assert cli.main(["train", "--task", str(MASA), "--out", str(tmp_path / "taken")]) == 2
    assert "taken: is a file, not a folder" in capsys.readouterr().err


def test_the_default_folder_is_named_after_the_task_and_never_reused(tmp_path: Path) -> None:
    first = cli.train_folder("demo", tmp_path)
    assert re.fullmatch(r"train-demo-\d{8}-\d{6}", first.name) and first.parent == tmp_path
    first.mkdir()
    second = cli.train_folder("demo", tmp_path)
    assert second != first and not second.exists()


def test_help_names_test_and_the_generations(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--test" in text and "outputs/design.<split>" in text and "runs/train-<task>-<time>" in text


def test_generation_rows_pair_each_record_with_its_prompt_target_and_parse() -> None:
    task = load_task(MASA, ["data.max_eval=4", "data.max_test=4"])
    for split in ("eval_id", "eval_ood"):
        records = task.splits[split]
        targets = [render(r, ES_SDE, task, ood=split.endswith("_ood")).target for r in records]
        texts = [targets[0], "garbage", *targets[2:]]
        rows = generations.rows(task, ES_SDE, split, texts)
        assert [r["id"] for r in rows] == [r.id for r in records]
        assert all(set(r) == ROW_KEYS for r in rows)
        assert [r["output"] for r in rows] == texts and [r["target"] for r in rows] == targets
        assert rows[0]["parsed"] == rows[0]["gold"] and rows[0]["errors"] == []
        assert rows[1]["errors"] != []  # the garbage output is a format error, still parsed
        ood = split.endswith("_ood")
        expected = parse("garbage", ES_SDE, task, ood=ood, slots=records[1].slots).answer
        assert rows[1]["parsed"] == {k: list(v) for k, v in expected.items()}
        assert all(r["prompt"] == render(rec, ES_SDE, task, ood=ood).prompt for r, rec in zip(rows, records,
                                                                                             strict=True))


# ---------------------------------------------------------------- two tiny real runs


def test_train_writes_its_generations_and_test_adds_the_test_splits(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["train", "--task", str(MASA), *_sets(TINY)]
    assert cli.main([*base, "--test"]) == 0
    out = capsys.readouterr().out
    (folder,) = (tmp_path / "runs").iterdir()  # the default --out
    assert folder.name.startswith("train-demo_masa-")
    task = load_task(MASA, [f"{k}={v}" for k, v in TINY.items()])
    splits = ("eval_id", "eval_ood", "test_id", "test_ood")
    for split in splits:
        rows = _rows(folder / "outputs" / f"design.{split}.jsonl")
        assert [r["id"] for r in rows] == [r.id for r in task.splits[split]]  # one row per scored record
        assert all(set(r) == ROW_KEYS and r["prompt"] and r["target"] for r in rows)
    assert len(task.splits["test_id"]) == 6 and len(task.splits["eval_id"]) == 5
    table = out.split("report  epoch", 1)[1]
    test_row = next(line for line in table.splitlines() if line.split()[:1] == ["test"])
    test_id = json.loads((folder / "test_metrics.json").read_text())["test_id"]
    assert f"{test_id['score']:7.3f}" in test_row and test_id["n_eval"] == 6
    assert "test (scored once, from the last checkpoint): ID kappa" in out
    assert f"generations in {Path('runs') / folder.name / 'outputs'}: design.eval_id.jsonl" in out
    rows = _rows(folder / "outputs" / "design.test_id.jsonl")  # the search's reader takes train's files
    from sde_search import report

    diff = report.versus_fixed(task, folder, "design", "test_id")
    assert diff is not None and diff.records == len(rows)

    assert cli.main([*base, "--out", str(folder)]) == 0  # the same folder again, without --test
    out = capsys.readouterr().out
    assert sorted(p.name for p in (folder / "outputs").iterdir()) == ["design.eval_id.jsonl",
                                                                     "design.eval_ood.jsonl"]
    assert not any(line.split()[:1] == ["test"] for line in out.splitlines())
    assert len(_rows(folder / "outputs" / "design.eval_id.jsonl")) == 5
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (folder / "test_metrics.json").exists()


def test_a_test_row_without_test_id_shows_dashes_for_id() -> None:
    from sde_search import cli_train  # torch, peft

    assert cli_train._cells({"score_ood": 0.5, "format_error_rate_ood": 0.25}, True).split() == [
        "-", "-", "0.500", "0.25", "-"]
    assert cli_train._cells({"score": 0.5, "format_error_rate": 0.0, "baseline_fixed": 0.25}, False).split() == [
        "0.500", "0.00", "0.250"]
