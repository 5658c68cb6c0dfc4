"""Tests for sde_search.render: round trips under all 216 designs, contracts, goldens and imperfect generations.

Regenerate the golden files after an intended change of wording with::

    SDE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_render.py -k golden
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from sde_search import metrics, tasks
from sde_search.config import Task, load_task
from sde_search.design import DIMENSIONS, ES_SDE, EW_SDE, PAPER_BASELINE, Design, all_designs, parse_design
from sde_search.render import FORMATS, NOTHING, parse, render

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
TASK_FILES = {name: ROOT / "examples" / f"demo_{name}.yaml" for name in ("masa", "entities", "events")}
ALL = list(all_designs())
FULL = ["data.max_train=null", "data.max_eval=null"]  # every record, not the search's sub-sample


@pytest.fixture(scope="module")
def loaded() -> dict[str, Task]:
    return {name: load_task(path, FULL) for name, path in TASK_FILES.items()}


@pytest.fixture(scope="module")
def masa() -> Task:
    """A task with one fixed aspect list, which the hand-written generations below are written against."""
    return load_task(Path(__file__).resolve().parent / "masa_fixed" / "task.yaml")


@pytest.fixture(scope="module")
def entities(loaded: dict[str, Task]) -> Task:
    return loaded["entities"]


# --- (a) round trip ------------------------------------------------------------------------------------------------


def test_the_round_trip_sees_every_record(loaded: dict[str, Task]) -> None:
    sizes = {name: len(task.splits["train"]) for name, task in loaded.items()}
    assert sizes == {"masa": 400, "entities": 300, "events": 300}
    assert len(loaded["masa"].splits["eval_ood"]) == 80


@pytest.mark.parametrize("design", ALL, ids=[d.short() for d in ALL])
def test_round_trip_every_record(design: Design, loaded: dict[str, Task]) -> None:
    for name, task in loaded.items():
        for split in ("train", "eval_ood") if name == "masa" else ("train",):
            ood = split.endswith("_ood")
            for record in task.splits[split]:
                sample = render(record, design, task, ood=ood)
                parsed = parse(sample.target, design, task, ood=ood, slots=record.slots)
                where = f"{name} {split} {record.id}\n{sample.target}"
                assert parsed.errors == (), where
                assert parsed.status == "ok", where
                assert parsed.answer == task.gold(record, split), where


@pytest.mark.parametrize("name", list(TASK_FILES))
def test_every_dimension_but_prompt_loss_changes_the_render(name: str, loaded: dict[str, Task]) -> None:
    task = loaded[name]
    record = task.splits["train"][0]  # has an empty slot, so unmentioned matters too
    renders = {}
    for design in ALL:
        sample = render(record, design, task)
        renders.setdefault((sample.prompt, sample.target), set()).add(
            dataclasses.replace(design, prompt_loss="exclude"))
    assert len(renders) == 108
    assert all(len(designs) == 1 for designs in renders.values())


@pytest.mark.parametrize("design", [ES_SDE, PAPER_BASELINE, parse_design("instruction=none")], ids=lambda d: d.short())
def test_prompt_layout(design: Design, masa: Task) -> None:
    record = masa.splits["train"][0]
    sample = render(record, design, masa)
    assert sample.prompt.endswith("\nOutput:\n")
    assert not sample.target.startswith((" ", "\n"))
    first_line = sample.prompt.split("\n", 1)[0]
    if design.instruction == "first":
        assert first_line.startswith("Rate the sentiment") and f"---\n{record.text}\nOutput:\n" in sample.prompt
    elif design.instruction == "last":
        assert first_line == record.text and "\n---\nRate the sentiment" in sample.prompt
    else:
        assert sample.prompt == f"{record.text}\nOutput:\n"


def test_ood_render_uses_the_ood_slots(masa: Task) -> None:
    record = masa.splits["eval_ood"][0]
    ood, in_domain = render(record, ES_SDE, masa, ood=True), render(record, ES_SDE, masa)
    assert [line.split(":")[0] for line in ood.target.splitlines()] == ["parking", "noise", "decor", "location"]
    assert "Aspects: parking, noise, decor, location." in ood.prompt
    assert [line.split(":")[0] for line in in_domain.target.splitlines()] == ["food", "drinks", "price", "staff"]


def test_a_record_with_its_own_slots_is_asked_and_scored_on_them(loaded: dict[str, Task]) -> None:
    task = loaded["masa"]
    record = next(r for r in task.splits["train"] if r.slots and len(r.slots) == 3)
    sample = render(record, ES_SDE, task)
    assert f"Aspects: {', '.join(record.slots)}." in sample.prompt
    assert [line.split(":")[0] for line in sample.target.splitlines()] == list(record.slots)
    assert set(task.gold(record, "train")) == set(record.slots)
    other = next(s for s in task.slots if s not in record.slots)
    parsed = parse(sample.target + f"\n{other}: positive", ES_SDE, task, slots=record.slots)
    assert "check_error" in parsed.errors and set(parsed.answer) == {*record.slots, other}
    assert parsed.answer[other] == ("positive",)  # kept: a rating nobody asked for is scored as a wrong answer
    scored = task.score([task.gold(record, "train")], [parsed.answer], "train")
    assert scored["accuracy"] == 3 / 4
    clean = parse(sample.target, ES_SDE, task, slots=record.slots)
    assert task.score([task.gold(record, "train")], [clean.answer], "train")["accuracy"] == 1.0
    fixed = task.fixed_answer("train")
    assert set(metrics.same_answer(fixed, [task.gold(record, "train")])[0]) == set(record.slots)


def test_omit_with_nothing_to_write_renders_none(entities: Task) -> None:
    record = next(r for r in entities.splits["train"] if not r.answer)
    assert render(record, EW_SDE, entities).target == NOTHING
    assert render(record, ES_SDE, entities).target == "person: none\norganization: none\nlocation: none"


# --- (b) contracts --------------------------------------------------------------------------------------------------


def test_formats_match_the_output_format_literal() -> None:
    assert set(FORMATS) == set(DIMENSIONS["output_format"])
    for fmt in FORMATS.values():
        assert callable(fmt.render) and callable(fmt.parse)


_TASK_TYPE_ATTRIBUTES = ("name", "multi_valued", "slot_noun", "value_noun", "score_key", "placeholder",
                         "default_instruction")


@pytest.mark.parametrize("name", ["aspect_sentiment", "entities", "events"])
def test_builtin_task_types_are_registered(name: str) -> None:
    assert name in tasks.TASK_TYPES


@pytest.mark.parametrize("name", sorted(tasks.TASK_TYPES))
def test_task_type_contract(name: str) -> None:
    kind = tasks.TASK_TYPES[name]
    for attribute in _TASK_TYPE_ATTRIBUTES:
        assert hasattr(type(kind), attribute), f"{name}: class attribute {attribute} is not set"
    assert kind.name == name
    assert isinstance(kind.multi_valued, bool)
    for attribute in ("slot_noun", "value_noun", "score_key", "placeholder"):
        value = getattr(kind, attribute)
        assert isinstance(value, str) and value and value == value.strip(), attribute
    if kind.multi_valued:
        assert kind.value_plural, f"{name}: a multi-valued type names its JSON list field"
    for field in ("{slots}", "{format}"):
        assert field in kind.default_instruction
    if not kind.multi_valued:
        assert "{labels}" in kind.default_instruction
    scores = kind.score([{}, {}], [{}, {}], slots=["a"], values=["x", "y"], unmentioned="unmentioned")
    assert kind.score_key in scores and "accuracy" in scores  # accuracy: the reads-the-input check needs it


def test_task_type_registry_rejects_a_second_registration() -> None:
    with pytest.raises(ValueError, match="'entities' is already registered"):
        tasks.task_type(type(tasks.TASK_TYPES["entities"]))


# --- (c) golden files -----------------------------------------------------------------------------------------------

GOLDEN_DESIGNS = {
    "paper_baseline": PAPER_BASELINE,
    "es_sde": ES_SDE,
    "ew_sde": EW_SDE,
    "json_cot_number": parse_design("output_format=json,reasoning=cot,label_style=number"),
    "natural_reverse_cot_omit": parse_design("output_format=natural,reasoning=reverse_cot,unmentioned=omit"),
    "none_include_lines": parse_design("instruction=none,prompt_loss=include,output_format=lines"),
}
GOLDEN_CASES = [(task, name, False) for task in TASK_FILES for name in GOLDEN_DESIGNS] + [("masa", "es_sde", True)]


def _golden_path(task: str, name: str, ood: bool) -> Path:
    return GOLDEN / task / f"{name}{'_ood' if ood else ''}.txt"


def _golden_text(task: Task, design: Design, ood: bool) -> str:
    record = task.splits["eval_ood" if ood else "train"][0]
    sample = render(record, design, task, ood=ood)
    return sample.prompt + sample.target + "\n"


@pytest.mark.parametrize(("task_name", "name", "ood"), GOLDEN_CASES,
                         ids=[str(_golden_path(*c).relative_to(GOLDEN)) for c in GOLDEN_CASES])
def test_golden(task_name: str, name: str, ood: bool, loaded: dict[str, Task]) -> None:
    path = _golden_path(task_name, name, ood)
    text = _golden_text(loaded[task_name], GOLDEN_DESIGNS[name], ood)
    if os.environ.get("SDE_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} is missing; run with SDE_UPDATE_GOLDEN=1 to write it"
    assert path.read_text(encoding="utf-8") == text, f"{path} differs; check the render, then SDE_UPDATE_GOLDEN=1"


def test_no_stale_golden_files() -> None:
    expected = {_golden_path(*c) for c in GOLDEN_CASES}
    assert set(GOLDEN.rglob("*.txt")) == expected


# --- (d) imperfect generations --------------------------------------------------------------------------------------

UNM = ("unmentioned",)
LINES_OK = "food: positive\ndrinks: negative\nprice: neutral\nstaff: unmentioned"
GOLD_OK = {"food": ("positive",), "drinks": ("negative",), "price": ("neutral",), "staff": UNM}


def test_a_clean_generation_parses_ok(masa: Task) -> None:
    parsed = parse(LINES_OK, ES_SDE, masa)
    assert (parsed.answer, parsed.errors, parsed.status) == (GOLD_OK, (), "ok")


@pytest.mark.parametrize("text", ["", "   \n  "])
def test_empty_generation(text: str, masa: Task) -> None:
    parsed = parse(text, ES_SDE, masa)
    assert parsed.errors == ("empty",)
    assert parsed.status == "failed"
    assert parsed.answer == dict.fromkeys(masa.slots, UNM)


def test_broken_json_line_is_rescued_as_a_split_error_and_still_scored(masa: Task) -> None:
    design = parse_design("output_format=json")
    text = ('{"aspect": "food", "label": "positive"}\n'
            '{"aspect": "drinks", "label": "negative"\n'  # no closing brace
            '{"aspect": "price", "label": "neutral"}\n'
            '{"aspect": "staff", "label": "unmentioned"}')
    parsed = parse(text, design, masa)
    assert parsed.errors == ("split_error",)
    assert (parsed.status, parsed.repaired) == ("failed", True)
    assert parsed.answer == GOLD_OK


def test_unreadable_json_line_is_a_split_error(masa: Task) -> None:
    text = '{"aspect": "food", "label": "positive"}\n{garbage}\n{"aspect": "drinks", "label": "negative"}'
    parsed = parse(text, parse_design("output_format=json"), masa)
    assert parsed.errors == ("split_error", "missing_slot")
    assert parsed.answer == {**dict.fromkeys(masa.slots, UNM), "food": ("positive",), "drinks": ("negative",)}


def test_unreadable_last_json_line_is_trailing_text(masa: Task) -> None:
    parsed = parse('{"aspect": "food", "label": "positive"}\n{garbage}', parse_design("output_format=json"), masa)
    assert parsed.errors == ("trailing_text", "missing_slot")
    assert parsed.answer == {**dict.fromkeys(masa.slots, UNM), "food": ("positive",)}


def test_json_is_never_evaluated(masa: Task) -> None:
    text = '{"aspect": "food", "label": __import__("os").getcwd()}'
    parsed = parse(text, parse_design("output_format=json,unmentioned=omit"), masa)
    assert parsed.errors == ("split_error",)
    assert parsed.answer == dict.fromkeys(masa.slots, UNM)


def test_unknown_key_is_a_check_error(masa: Task) -> None:
    parsed = parse(LINES_OK + "\nambience: positive", ES_SDE, masa)
    assert parsed.errors == ("check_error",)
    assert parsed.answer == GOLD_OK


def test_unknown_label_is_a_label_error_read_as_unmentioned(masa: Task) -> None:
    parsed = parse(LINES_OK.replace("food: positive", "food: fantastic"), ES_SDE, masa)
    assert parsed.errors == ("label_error",)
    assert parsed.answer == {**GOLD_OK, "food": UNM}


def test_unknown_number_code_is_an_error(masa: Task) -> None:
    design = parse_design("label_style=number")
    assert parse("food: 1\ndrinks: -1\nprice: 0\nstaff: -2", design, masa).answer == GOLD_OK
    parsed = parse("food: 5\ndrinks: -1\nprice: 0\nstaff: -2", design, masa)
    assert parsed.errors and parsed.answer["food"] == UNM


@pytest.mark.parametrize(
    ("text", "status"),
    [("food: good\ndrinks: Poor\nprice: neutral\nstaff: unmentioned", "repaired"),
     ("food quality: positive\ndrinks: negative\nprice: neutral\nstaff: unmentioned", "repaired"),
     ("Food: Positive\ndrinks: negative.\nprice: \"neutral\"\nstaff: unmentioned", "repaired")],
    ids=["label_synonyms", "slot_keyword", "case_and_punctuation"],
)
def test_soft_normalisation(text: str, status: str, masa: Task) -> None:
    parsed = parse(text, ES_SDE, masa)
    assert parsed.errors == ()
    assert parsed.status == status
    assert parsed.answer == GOLD_OK


def test_missing_slot_under_placeholder(masa: Task) -> None:
    parsed = parse("food: positive\ndrinks: negative\nprice: neutral", ES_SDE, masa)
    assert parsed.errors == ("missing_slot",)
    assert parsed.answer == GOLD_OK


def test_missing_slot_is_fine_under_omit(masa: Task) -> None:
    parsed = parse("food: positive\ndrinks: negative\nprice: neutral", parse_design("unmentioned=omit"), masa)
    assert (parsed.errors, parsed.answer) == ((), GOLD_OK)


@pytest.mark.parametrize("text", ["none", "None.", " none \n"])
def test_none_under_omit_means_all_unmentioned(text: str, masa: Task, entities: Task) -> None:
    parsed = parse(text, EW_SDE, masa)
    assert (parsed.errors, parsed.status) == ((), "ok")
    assert parsed.answer == dict.fromkeys(masa.slots, UNM)
    parsed = parse(text, EW_SDE, entities)
    assert (parsed.errors, parsed.answer) == ((), dict.fromkeys(entities.slots, ()))


def test_rationale_with_commas_in_natural_cot(masa: Task) -> None:
    design = parse_design("paper_baseline,reasoning=cot")
    text = ("food: the bread, the soup and the fish were great => positive, "
            "drinks: drinks is not discussed => unmentioned, "
            "price: the bill, sadly, was high => negative, staff: staff is not discussed => unmentioned.")
    parsed = parse(text, design, masa)
    assert parsed.errors == ()
    assert parsed.answer == {"food": ("positive",), "drinks": UNM, "price": ("negative",), "staff": UNM}


def test_rationale_with_commas_in_natural_cot_for_spans(entities: Task) -> None:
    design = parse_design("paper_baseline,reasoning=cot")
    text = ("person: no person, really, is named => none; organization: one bank => Dunhollow Bank; "
            "location: two places, both towns => Dunhollow, New Harl.")
    parsed = parse(text, design, entities)
    assert parsed.errors == ()
    assert parsed.answer == {"person": (), "organization": ("Dunhollow Bank",), "location": ("Dunhollow", "New Harl")}


def test_cot_without_its_separator_is_a_split_error(masa: Task) -> None:
    design = parse_design("reasoning=cot")
    parsed = parse(LINES_OK.replace("food: positive", "food: the bread was great"), design, masa)
    assert "split_error" in parsed.errors


def test_natural_unit_without_colon_is_rescued_as_a_split_error(masa: Task) -> None:
    parsed = parse("food positive, drinks: negative, price: neutral, staff: unmentioned.", PAPER_BASELINE, masa)
    assert (parsed.errors, parsed.repaired) == (("split_error",), True)
    assert parsed.answer == GOLD_OK


def test_natural_unit_that_cannot_be_read_is_a_split_error(masa: Task) -> None:
    parsed = parse("food is lovely, drinks: negative, price: neutral, staff: unmentioned.", PAPER_BASELINE, masa)
    assert parsed.errors == ("split_error", "missing_slot")
    assert parsed.answer == {**GOLD_OK, "food": UNM}


def test_json_target_of_spans_round_trips_through_json(entities: Task) -> None:
    record = entities.splits["train"][0]
    target = render(record, parse_design("output_format=json"), entities).target
    rows = [json.loads(line) for line in target.splitlines()]
    assert rows[0] == {"type": "person", "entities": []}
    assert {tuple(r["entities"]) for r in rows} == {(), ("Dunhollow Bank",), ("Dunhollow", "New Harl")}


def test_a_list_broken_inside_is_a_split_error_not_a_crash(entities: Task) -> None:
    # seen in the GENIA study: the regex fallback matched the list, whose own JSON was broken
    text = '{"type": "person", "entities": ["Ann", "Bo]}, "x": 1'
    parsed = parse(text, parse_design("output_format=json,unmentioned=omit"), entities)
    assert parsed.errors == ("split_error",)
    assert parsed.answer["person"] == ("Ann", "Bo")


def test_bare_none_under_placeholder_is_a_format_error():
    from pathlib import Path

    from sde_search.config import load_task
    from sde_search.design import ES_SDE, Design
    from sde_search.render import parse

    task = load_task(Path(__file__).resolve().parents[1] / "examples/demo_masa.yaml")
    assert parse("none", ES_SDE, task).errors == ("missing_slot",)
    assert parse("none", Design(unmentioned="omit"), task).errors == ()
