"""``sde-search init``: a starter task and its synthetic sample pass ``--check``; nothing is ever replaced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sde_search import scaffold, synthetic
from sde_search.cli import main

KINDS = sorted(scaffold.KINDS)


def _init(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["init", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("kind", KINDS)
def test_init_writes_a_starter_that_passes_check(kind, tmp_path, capsys):
    folder = tmp_path / "t"
    rc, out, err = _init(capsys, kind, str(folder))
    assert rc == 0, err
    files = scaffold.planned(kind, folder)
    assert all(p.is_file() for p in files)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
        p.relative_to(folder).as_posix() for p in files)  # nothing else written
    assert f"--task {folder / 'task.yaml'} --check" in out
    text = (folder / "task.yaml").read_text(encoding="utf-8")
    assert text.startswith("# sde-search --task task.yaml --check")
    assert yaml.safe_load(text)["search_space"] == "quick"  # a built-in space, found by name
    assert main(["--task", str(folder / "task.yaml"), "--check"]) == 0
    assert "round trip: ok" in capsys.readouterr().out


@pytest.mark.parametrize("kind", KINDS)
def test_init_data_come_from_the_seeded_generator(kind, tmp_path, capsys):
    assert _init(capsys, kind, str(tmp_path / "a"))[0] == 0
    assert _init(capsys, kind, str(tmp_path / "b"))[0] == 0
    ids = []
    for split in scaffold.KINDS[kind]:
        a, b = (tmp_path / d / "data" / split.file for d in "ab")
        assert a.read_bytes() == b.read_bytes()  # deterministic
        records = [json.loads(line) for line in a.read_text(encoding="utf-8").splitlines()]
        assert records == split.records() and len(records) == split.size
        ids += [r["id"] for r in records]
    assert len(ids) == len(set(ids))  # ids unique across the starter's files


def test_starter_slots_are_the_generators():
    def slots(kind: str) -> dict:
        return yaml.safe_load((scaffold.STARTERS / f"{kind}.yaml").read_text(encoding="utf-8"))["labels"]

    assert slots("masa")["slots"] == list(synthetic.MASA_ID_ASPECTS)
    assert slots("masa")["ood_slots"] == list(synthetic.MASA_OOD_ASPECTS)
    assert slots("ner")["slots"] == list(synthetic.ENTITY_TYPES)
    assert slots("events")["slots"] == list(synthetic.EVENT_TYPES)
    assert sorted(p.stem for p in scaffold.STARTERS.glob("*.yaml")) == KINDS


def test_init_never_replaces_a_file(tmp_path, capsys):
    folder = tmp_path / "t"
    assert _init(capsys, "masa", str(folder))[0] == 0
    (folder / "task.yaml").write_text("mine\n", encoding="utf-8")
    rc, out, err = _init(capsys, "masa", str(folder))
    assert rc == 2 and out == ""
    assert err.splitlines() == [f"error: {folder / 'task.yaml'}: already exists; init never replaces a file "
                                "(name another folder, or move the file away)"]
    assert (folder / "task.yaml").read_text(encoding="utf-8") == "mine\n"


def test_init_checks_every_file_before_writing_any(tmp_path, capsys):
    folder = tmp_path / "t"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "dev.jsonl").write_text("{}\n", encoding="utf-8")
    rc, _, err = _init(capsys, "events", str(folder))
    assert rc == 2 and len(err.splitlines()) == 1 and "dev.jsonl: already exists" in err
    assert sorted(p.name for p in folder.rglob("*")) == ["data", "dev.jsonl"]  # nothing written


def test_init_into_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x", encoding="utf-8")
    rc, _, err = _init(capsys, "ner", str(target))
    assert rc == 2 and err.splitlines() == [f"error: {target}: is a file, not a folder (name a new or existing folder)"]


def test_init_default_folder_and_task_type_alias(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _init(capsys, "entities")[0] == 0  # the task type names the ner starter
    assert yaml.safe_load((tmp_path / "ner_task" / "task.yaml").read_text(encoding="utf-8"))["type"] == "entities"
    assert _init(capsys, "events")[0] == 0
    assert (tmp_path / "events_task" / "data" / "train.jsonl").is_file()


def test_init_unknown_type_suggests_one(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["init", "mas"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'mas' is not a starter; did you mean 'masa'?" in err and "allowed: masa, ner, events" in err


def test_scaffold_imports_no_heavy_library():
    code = ("import sys, sde_search.scaffold; "
            "print([m for m in ('torch', 'transformers', 'peft', 'ray', 'mlflow', 'datasets') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_train_runs_on_the_starter(tmp_path, capsys):
    assert _init(capsys, "masa", str(tmp_path / "t"))[0] == 0
    out = tmp_path / "out"
    rc = main(["train", "--task", str(tmp_path / "t" / "task.yaml"), "--out", str(out), "--set", "train.epochs=1",
               "--set", "data.max_train=32", "--set", "data.max_eval=8"])
    assert rc == 0, capsys.readouterr().err
    assert len((out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) == 1
    assert Path(out / "outputs" / "design.eval_id.jsonl").is_file()


@pytest.mark.parametrize("argv", [["--help"], ["search", "--help"]])
def test_help_ends_with_examples_that_parse(argv, capsys):
    import re

    from sde_search.cli import COMMANDS, build_parser

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    block = out[out.index("\nexamples:\n"):]
    assert "examples/demo_masa.yaml" in block and "my_task/task.yaml" in block
    assert "init masa my_task" in block  # how to get my_task/task.yaml outside the repository
    root = Path(__file__).resolve().parents[1]
    commands = [re.split(r" {2,}", line.strip())[0].split()[1:] for line in block.splitlines()
                if line.startswith("  sde-search ") and "COMMAND" not in line]
    assert len(commands) >= 4
    for words in commands:  # every example is a command line the parser takes
        build_parser().parse_args(words if words[0] in COMMANDS else ["search", *words])
        for word in words:
            if word.startswith("examples/"):
                assert (root / word).is_file(), word
