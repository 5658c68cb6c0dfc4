"""Splits declared in the task YAML alone: carves, OOD splits never derived unless asked, ``none``, path resolution.

The records are written here (not the example data), so that each test controls ids, texts and group fields.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sde_search import cli, splits
from sde_search.config import ConfigError, Task, check_compatible, load_space, load_task

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "quick.yaml"
SLOTS = ("food", "price")
OOD = ("parking", "noise")
LABELS = ("labels: {slots: [food, price], ood_slots: [parking, noise], values: [positive, negative, neutral], "
          "unmentioned: unmentioned}\n")
POLARITY = ("positive", "negative", "neutral")


def _rows(n: int, prefix: str = "r", per_doc: int = 3) -> list[dict[str, object]]:
    """``n`` MASA rows; ``doc`` groups ``per_doc`` of them, ids read ``<prefix><doc>-s<i>``, texts are distinct."""
    rows = []
    for i in range(n):
        doc = i // per_doc
        labels = {"food": POLARITY[i % 3], "price": POLARITY[(i // 3) % 3], "parking": POLARITY[(i // 2) % 3]}
        rows.append({"id": f"{prefix}doc{doc}-s{i % per_doc}", "doc": f"d{doc}",
                     "text": f"Review {prefix}{i}: food {labels['food']}, price {labels['price']}.", "labels": labels})
    return rows


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _task(folder: Path, data: str, labels: str = LABELS, extra: str = "", train_rows: int = 60) -> Path:
    """A task file in ``folder`` whose ``data:`` block is ``data``; data/pool.jsonl, dev.jsonl, test.jsonl beside it."""
    _write(folder / "data" / "pool.jsonl", _rows(train_rows))
    _write(folder / "data" / "dev.jsonl", _rows(12, prefix="dev"))
    _write(folder / "data" / "test.jsonl", _rows(12, prefix="test"))
    path = folder / "task.yaml"
    path.write_text(f"name: t\ntype: aspect_sentiment\ndata: {data}\n{labels}search_space: {SPACE}\n{extra}",
                    encoding="utf-8")
    return path


def _ids(task: Task, split: str) -> list[str]:
    return [r.id for r in task.splits[split]]


def _problems(path: Path, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_task(path, overrides)
    return info.value.problems


# --- carving ----------------------------------------------------------------------------------------------------------


def test_a_carve_is_deterministic_and_disjoint_from_the_rest(tmp_path: Path) -> None:
    path = _task(tmp_path, "{root: data, train: pool.jsonl, eval_id: {from: pool.jsonl, size: 15, seed: 3}}")
    task = load_task(path)
    train, dev = _ids(task, "train"), _ids(task, "eval_id")
    assert len(dev) == 15 and len(train) == 45
    assert not set(train) & set(dev)
    assert not {r.text for r in task.splits["train"]} & {r.text for r in task.splits["eval_id"]}
    assert sorted(train + dev) == sorted(r["id"] for r in _rows(60))  # nothing lost, nothing doubled
    assert _ids(load_task(path), "eval_id") == dev  # same seed, same carve
    other = load_task(path, ["data.eval_id.seed=4"])
    assert _ids(other, "eval_id") != dev and len(_ids(other, "eval_id")) == 15
    assert dev != [r["id"] for r in _rows(60)][:15]  # drawn at random, not the file's first 15


def test_a_carve_from_a_split_name_is_the_carve_from_its_file(tmp_path: Path) -> None:
    by_file = load_task(_task(tmp_path / "a", "{root: data, train: pool.jsonl, eval_id: {from: pool.jsonl, size: 9}}"))
    by_split = load_task(_task(tmp_path / "b", "{root: data, train: pool.jsonl, eval_id: {from: train, size: 9}}"))
    assert _ids(by_file, "eval_id") == _ids(by_split, "eval_id")
    assert _ids(by_file, "train") == _ids(by_split, "train")


def test_the_carve_seed_defaults_to_data_seed(tmp_path: Path) -> None:
    path = _task(tmp_path, "{root: data, train: pool.jsonl, eval_id: {from: train, size: 9}, seed: 5}")
    explicit = load_task(path, ["data.eval_id.seed=5"])
    assert _ids(load_task(path), "eval_id") == _ids(explicit, "eval_id")
    assert _ids(load_task(path, ["data.seed=6"]), "eval_id") != _ids(explicit, "eval_id")


@pytest.mark.parametrize("seed", range(4))
def test_grouping_by_a_field_keeps_every_group_whole(tmp_path: Path, seed: int) -> None:
    path = _task(tmp_path, "{root: data, train: pool.jsonl, "
                           f"eval_id: {{from: train, size: 10, seed: {seed}, group: doc}}}}")
    task = load_task(path)
    docs = {split: {i.split("-")[0] for i in _ids(task, split)} for split in ("train", "eval_id")}
    assert not docs["train"] & docs["eval_id"]
    assert 10 <= len(_ids(task, "eval_id")) < 10 + 3  # whole groups of 3: at most one group past the size
    assert len(_ids(task, "eval_id")) % 3 == 0


def test_a_match_on_the_record_id_groups_by_document(tmp_path: Path) -> None:
    data = r"{root: data, train: pool.jsonl, eval_id: {from: train, size: 8, group: id, match: 'doc\d+'}}"
    task = load_task(_task(tmp_path, data))
    docs = {split: {i.split("-")[0] for i in _ids(task, split)} for split in ("train", "eval_id")}
    assert not docs["train"] & docs["eval_id"] and len(_ids(task, "eval_id")) == 9
    assert "group id ~ 'doc\\d+'" in task.sources["eval_id"]


def test_records_with_the_same_text_stay_together(tmp_path: Path) -> None:
    rows = _rows(40)
    for row in rows[::4]:  # every 4th record repeats one text
        row["text"] = "The same words again."
    path = _task(tmp_path, "{root: data, train: pool.jsonl, eval_id: {from: train, size: 5}}")
    _write(tmp_path / "data" / "pool.jsonl", rows)
    for seed in range(6):
        task = load_task(path, [f"data.eval_id.seed={seed}"])
        texts = [{r.text for r in task.splits[s]} for s in ("train", "eval_id")]
        assert not texts[0] & texts[1]


def test_a_fraction_is_of_the_whole_file(tmp_path: Path) -> None:
    task = load_task(_task(tmp_path, "{root: data, train: pool.jsonl, eval_id: {from: train, size: 0.25}}"))
    assert len(_ids(task, "eval_id")) == 15 and len(_ids(task, "train")) == 45
    assert "0.25 of them" in task.sources["eval_id"]


def test_several_carves_from_one_file_are_disjoint(tmp_path: Path) -> None:
    data = ("{root: data, train: pool.jsonl, eval_id: {from: train, size: 12, group: doc}, "
            "test_id: {from: pool.jsonl, size: 0.2, seed: 1}}")
    task = load_task(_task(tmp_path, data))
    parts = [set(_ids(task, s)) for s in ("train", "eval_id", "test_id")]
    assert sum(map(len, parts)) == 60 and len(set.union(*parts)) == 60
    docs = [{i.split("-")[0] for i in p} for p in parts]
    assert not docs[0] & docs[2] and not docs[1] & docs[2]  # every carve's groups join: test_id too keeps docs whole
    assert "left after carving 12 for eval_id, 12 for test_id" in task.sources["train"]


def test_subsampling_applies_after_the_carve(tmp_path: Path) -> None:
    path = _task(tmp_path, "{root: data, train: pool.jsonl, eval_id: {from: train, size: 20}, max_eval: 5}")
    task = load_task(path)
    full = set(_ids(load_task(path, ["data.max_eval=null"]), "eval_id"))
    assert len(_ids(task, "eval_id")) == 5 and set(_ids(task, "eval_id")) <= full
    assert "carved 20 from" in task.sources["eval_id"] and "5 sampled (data.max_eval" in task.sources["eval_id"]


def test_carving_helpers_directly() -> None:
    groups = splits.group_numbers([["a", "a", "b", "c", "c", "d"]], ["t1", "t2", "t3", "t4", "t3", "t5"])
    assert groups == [0, 0, 1, 1, 1, 2]  # 'b' and 'c' share text t3, so one group
    picked = splits.carve(range(6), groups, 2, seed=0)
    assert picked == splits.carve(range(6), groups, 2, seed=0)
    assert {groups[i] for i in picked}.isdisjoint({groups[i] for i in range(6) if i not in picked})
    assert splits.wanted(0.5, 7) == 4 and splits.wanted(3, 7) == 3


# --- OOD: never derived, none turns it off, {from: eval_id} asks for it ----------------------------------------------


def test_ood_splits_are_never_derived(tmp_path: Path) -> None:
    task = load_task(_task(tmp_path, "{root: data, train: pool.jsonl, eval_id: dev.jsonl, test_id: test.jsonl}"))
    assert task.ood_slots != task.slots
    assert set(task.splits) == {"train", "eval_id", "test_id"}
    assert task.sources["eval_ood"].startswith("none -- labels.ood_slots are not scored during the search")
    assert "{from: eval_id}" in task.sources["eval_ood"] and "{from: test_id}" in task.sources["test_ood"]


@pytest.mark.parametrize("off", ["none", "null"])
def test_none_turns_ood_off(tmp_path: Path, off: str) -> None:
    data = (f"{{root: data, train: pool.jsonl, eval_id: dev.jsonl, eval_ood: {off}, test_id: test.jsonl, "
            f"test_ood: {off}}}")
    task = load_task(_task(tmp_path, data))
    assert "eval_ood" not in task.splits and "test_ood" not in task.splits
    assert task.sources["eval_ood"] == task.sources["test_ood"] == "none (turned off in the task file)"
    on = load_task(task.path, ["data.eval_ood=test.jsonl"])
    assert "eval_ood" in on.splits
    assert "eval_ood" not in load_task(task.path, ["data.eval_ood=test.jsonl", "data.eval_ood=none"]).splits


def test_an_ood_objective_without_an_ood_split_is_refused(tmp_path: Path) -> None:
    path = _task(tmp_path, "{root: data, train: pool.jsonl, eval_id: dev.jsonl, eval_ood: none}",
                 extra="objective: ood\n")
    with pytest.raises(ConfigError, match=r"objective: 'ood' needs an OOD set: data.eval_ood"):
        check_compatible(load_task(path), load_space(SPACE), SPACE)


def test_eval_id_read_with_the_ood_slots_when_asked(tmp_path: Path) -> None:
    data = ("{root: data, train: pool.jsonl, eval_id: {from: train, size: 10}, eval_ood: {from: eval_id}, "
            "test_id: test.jsonl, test_ood: {from: test_id}, max_eval: 6}")
    task = load_task(_task(tmp_path, data))
    assert _ids(task, "eval_ood") == _ids(task, "eval_id") and len(_ids(task, "eval_ood")) == 6
    assert _ids(task, "test_ood") == _ids(task, "test_id")
    assert set(task.gold(task.splits["eval_ood"][0], "eval_ood")) == set(OOD)
    assert task.sources["eval_ood"].startswith("eval_id's 10 records read with labels.ood_slots")


def test_a_twin_drops_the_records_own_slot_lists(tmp_path: Path) -> None:
    """Records that list their own (ID) slots are read with labels.ood_slots in the OOD twin, not with their list."""
    path = _task(tmp_path, "{root: data, train: pool.jsonl, eval_id: own.jsonl, eval_ood: {from: eval_id}}")
    _write(tmp_path / "data" / "own.jsonl", [{**r, "slots": ["price"]} for r in _rows(6, prefix="own")])
    task = load_task(path)
    assert all(r.slots == ("price",) for r in task.splits["eval_id"])
    assert set(task.gold(task.splits["eval_id"][0], "eval_id")) == {"price"}
    assert all(r.slots is None for r in task.splits["eval_ood"])
    assert set(task.gold(task.splits["eval_ood"][0], "eval_ood")) == set(OOD)


def test_a_record_slot_list_outside_the_split_pool_is_refused(tmp_path: Path) -> None:
    path = _task(tmp_path, "{root: data, train: pool.jsonl, eval_id: own.jsonl}")
    _write(tmp_path / "data" / "own.jsonl", [{**r, "slots": ["food", "parking"]} for r in _rows(3, prefix="own")])
    problems = _problems(path)
    assert any("its slots ['food', 'parking'] name ['parking'], not in labels.slots" in p for p in problems), problems


@pytest.mark.parametrize(("value", "says"), [("food", "must be a non-empty list"), ([], "must be a non-empty list"),
                                              (["food", "food"], "names a slot twice")])
def test_a_bad_record_slot_list_is_a_bad_row(tmp_path: Path, value: object, says: str) -> None:
    path = _task(tmp_path, "{root: data, train: pool.jsonl, eval_id: own.jsonl}")
    _write(tmp_path / "data" / "own.jsonl", [{**r, "slots": value} for r in _rows(2, prefix="own")])
    problems = _problems(path)
    assert any("own.jsonl row 1" in p and says in p for p in problems), problems


# --- where a path leads --------------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_data_root_and_the_yaml_folder(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = _task(tmp_path / "project", "{root: data, train: pool.jsonl, eval_id: dev.jsonl}")
    monkeypatch.chdir(tmp_path)
    task = load_task(Path("project") / "task.yaml")
    assert task.sources["train"].startswith(str(path.parent / "data" / "pool.jsonl"))


def test_absolute_and_home_paths_are_taken_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = _write(tmp_path / "elsewhere" / "dev.jsonl", _rows(7, prefix="x"))
    home = tmp_path / "home"
    _write(home / "sets" / "test.jsonl", _rows(5, prefix="h"))
    monkeypatch.setenv("HOME", str(home))
    data = (f"{{root: data, train: pool.jsonl, eval_id: '{elsewhere}', test_id: ~/sets/test.jsonl, "
            f"test_ood: {{from: ~/sets/test.jsonl, size: 2}}}}")
    task = load_task(_task(tmp_path / "project", data))
    assert len(task.splits["eval_id"]) == 7 and len(task.splits["test_id"]) == 3 and len(task.splits["test_ood"]) == 2
    assert task.sources["test_id"].startswith(str(home / "sets" / "test.jsonl"))
    root_home = load_task(task.path, ["data.root=~/sets", "data.test_id=test.jsonl", "data.test_ood=none",
                                      f"data.train={tmp_path / 'project' / 'data' / 'pool.jsonl'}"])
    assert len(root_home.splits["test_id"]) == 5


def test_a_missing_file_says_how_its_path_was_resolved(tmp_path: Path) -> None:
    problems = _problems(_task(tmp_path, "{root: data, train: pool.jsonl, eval_id: nowhere.jsonl}"))
    assert any("data.eval_id: file not found: " in p and "relative paths resolve against data.root = "
               f"{tmp_path / 'data'}" in p for p in problems), problems
    problems = _problems(_task(tmp_path, "{root: data, train: pool.jsonl, eval_id: /no/such/dev.jsonl}"))
    assert any("file not found: /no/such/dev.jsonl (an absolute or ~ path is taken as is)" in p for p in problems)


# --- reuse of a file: refused whole, accepted as a carve -------------------------------------------------------------


@pytest.mark.parametrize("eval_id", ["pool.jsonl", "./pool.jsonl", "../data/pool.jsonl"])
def test_plain_reuse_of_the_train_file_is_refused(tmp_path: Path, eval_id: str) -> None:
    problems = _problems(_task(tmp_path, f"{{root: data, train: pool.jsonl, eval_id: {eval_id}}}"))
    assert any("data.eval_id: the same source as data.train (pool.jsonl); scores would be measured on training "
               "data (to hold records out of it, carve them: eval_id: {from: train, size: N})" in p
               for p in problems), problems


# --- bad input: one line naming the file, the key and what is allowed ------------------------------------------------


BAD = {
    "size_above_records": ("{root: data, train: pool.jsonl, eval_id: {from: train, size: 61}}",
                           "data.eval_id.size: 61 records, but ", "has only 60 (allowed: 1 to 59)"),
    "size_zero": ("{root: data, train: pool.jsonl, eval_id: {from: train, size: 0}}",
                  "data.eval_id: size: 0 carves no records (allowed: a whole number >= 1", ""),
    "size_float_above_one": ("{root: data, train: pool.jsonl, eval_id: {from: train, size: 1.5}}",
                             "data.eval_id: size: 1.5 is not a fraction 0 < size < 1", ""),
    "size_fraction_rounds_to_zero": ("{root: data, train: pool.jsonl, eval_id: {from: train, size: 0.001}}",
                                     "data.eval_id.size: 0.001 of the 60 records of ", "is no record (allowed: "),
    "size_string": ("{root: data, train: pool.jsonl, eval_id: {from: train, size: ten}}",
                    "data.eval_id.size: Input should be a valid", ""),
    "carve_takes_everything": ("{root: data, train: pool.jsonl, eval_id: {from: train, size: 58, group: doc}}",
                               "data.eval_id.size: the carves out of ", "leaving none for data.train"),
    "group_unknown": ("{root: data, train: pool.jsonl, eval_id: {from: train, size: 5, group: dok}}",
                      "data.eval_id.group: 'dok' is not a field of the records of ", "did you mean 'doc'?"),
    "match_finds_nothing": ("{root: data, train: pool.jsonl, eval_id: {from: train, size: 5, match: 'zzz'}}",
                            "data.eval_id.match: 'zzz' finds nothing in 60 of 60 values of id in ",
                            "every record's id must match"),
    "match_not_a_regex": ("{root: data, train: pool.jsonl, eval_id: {from: train, size: 5, match: '(doc'}}",
                          "data.eval_id: match: '(doc' is not a regular expression", ""),
    "carve_from_missing_file": ("{root: data, train: pool.jsonl, eval_id: {from: gone.jsonl, size: 5}}",
                                "data.eval_id: file not found: ", "relative paths resolve against data.root"),
    "file_without_size": ("{root: data, train: pool.jsonl, eval_id: {from: dev.jsonl}}",
                          "data.eval_id.from: 'dev.jsonl' is a file: add size: N (records) or a fraction",
                          "or write data.eval_id: dev.jsonl to read all of it"),
    "split_without_size": ("{root: data, train: pool.jsonl, eval_id: {from: train}}",
                           "data.eval_id.from: 'train' without size would read another split's records",
                           "(allowed: eval_ood: {from: eval_id}, test_ood: {from: test_id})"),
    "seed_without_size": ("{root: data, train: pool.jsonl, eval_id: dev.jsonl, eval_ood: {from: eval_id, seed: 1}}",
                          "data.eval_ood: seed only go with size (a carve)", ""),
    "twin_of_nothing": ("{root: data, train: pool.jsonl, eval_id: dev.jsonl, test_ood: {from: test_id}}",
                        "data.test_ood.from: 'test_id', but data.test_id is not set", ""),
    "twin_of_the_wrong_split": ("{root: data, train: pool.jsonl, eval_id: dev.jsonl, test_ood: {from: eval_id}}",
                                "data.test_ood.from: 'eval_id' without size", ""),
    "carve_from_a_carve": ("{root: data, train: {from: pool.jsonl, size: 50}, eval_id: {from: train, size: 5}}",
                           "data.eval_id.from: 'train' carves out of data.train's file, but data.train is not a file",
                           ""),
    "train_none": ("{root: data, train: none, eval_id: dev.jsonl}",
                   "data.train: 'none' turns a split off, but train is required (allowed: a file", ""),
    "key_typo": ("{root: data, train: pool.jsonl, eval_id: {frm: train, size: 5}}",
                 "data.eval_id.frm: unknown key; did you mean 'from'? (allowed: from, size, seed, group, match)", ""),
    "from_missing": ("{root: data, train: pool.jsonl, eval_id: {size: 5}}",
                     "data.eval_id.from: required key is missing -- A file (or hf:<id>) to carve from", ""),
    "split_a_number": ("{root: data, train: pool.jsonl, eval_id: 5}",
                       "data.eval_id: Input should be a valid string (got 5) -- In-domain records", "a carve"),
    "empty_path": ("{root: data, train: pool.jsonl, eval_id: ''}", "data.eval_id: an empty path (allowed: ", ""),
    "hf_no_id_in_carve": ("{root: data, train: pool.jsonl, eval_id: {from: 'hf:', size: 5}}",
                          "data.eval_id.from: 'hf:' names no dataset (allowed: hf:<dataset id>", ""),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_split_values_get_one_clear_line(case: str, tmp_path: Path) -> None:
    data, first, second = BAD[case]
    path = _task(tmp_path, data)
    problems = _problems(path)
    hits = [p for p in problems if first in p and second in p]
    assert hits, problems
    assert all(p.startswith(f"{path}: ") and "\n" not in p for p in problems)


def test_a_group_key_missing_in_some_records(tmp_path: Path) -> None:
    path = _task(tmp_path, "{root: data, train: pool.jsonl, eval_id: {from: train, size: 5, group: source}}")
    rows = _rows(60)
    for row in rows[:58]:
        row["source"] = "web"
    rows[58]["source"] = None
    _write(tmp_path / "data" / "pool.jsonl", rows)
    assert any("data.eval_id.group: 'source' is missing (or null) in 2 of 60 records of " in p
               and "e.g. record 'rdoc19-s1'; every record needs a group value" in p for p in _problems(path))


def test_a_twin_needs_different_ood_slots(tmp_path: Path) -> None:
    labels = LABELS.replace("ood_slots: [parking, noise], ", "")
    path = _task(tmp_path, "{root: data, train: pool.jsonl, eval_id: dev.jsonl, eval_ood: {from: eval_id}}",
                 labels=labels)
    assert any("data.eval_ood: {from: eval_id} reads eval_id's records with labels.ood_slots, but labels.ood_slots "
               "are not set, so it would repeat data.eval_id (allowed: set labels.ood_slots" in p
               for p in _problems(path))


def test_check_prints_every_split_source_and_bad_input_exits_2(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = "{root: data, train: pool.jsonl, eval_id: {from: train, size: 9, group: doc}, eval_ood: none}"
    path = _task(tmp_path, data)
    assert cli.main(["--task", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    block = out.split("splits:\n", 1)[1].splitlines()[:5]
    assert [line.split(":")[0].strip() for line in block] == list(splits.SPLITS)
    pool = tmp_path / "data" / "pool.jsonl"
    assert block[1] == f"  eval_id: carved 9 from {pool} (60 records; size 9, seed 0, group doc)"
    assert "records left after carving 9 for eval_id" in block[0]
    assert block[2] == "  eval_ood: none (turned off in the task file)" and block[3] == "  test_id: none"
    assert cli.main(["--task", str(path), "--check", "--set", "data.eval_id.size=100"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.startswith(f"error: {path}: data.eval_id.size: 100 records, but ")


def test_the_splits_module_imports_no_heavy_library() -> None:
    script = ("import sys, sde_search.splits\n"
              "print([m for m in ('torch', 'transformers', 'peft', 'ray', 'mlflow', 'datasets') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
