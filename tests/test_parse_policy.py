"""One leniency policy for every output format: the same defect parses alike in natural, lines and json.

Each case renders a gold answer with the project's renderer for a tiny task, injects one defect in the
format's own syntax, parses it and checks the answer, the error kinds and the repaired flag; the same
expectation holds for every format, label style, unmentioned style and reasoning (README "How
generations are parsed").
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from sde_search.config import Task, load_task
from sde_search.design import Design, parse_design
from sde_search.metrics import repair_rate
from sde_search.parse import Codec
from sde_search.render import FORMATS, Parsed, Unit, codec, parse, render, to_units

FORMAT_NAMES = ("natural", "lines", "json")
REASONING = ("none", "cot", "reverse_cot")
UNM = ("unmentioned",)
CHATTER = "Hope this helps!"

MASA_YAML = """\
name: tiny_masa
type: aspect_sentiment
data: {root: ., train: masa.jsonl, eval_id: masa_dev.jsonl}
labels:
  slots: [food_drinks, price, staff, ambience]
  values: [positive, negative, neutral]
  unmentioned: unmentioned
  numbers: {positive: 1, neutral: 0, negative: -1, unmentioned: -2}
  synonyms: {positive: [good, great], negative: [bad, poor], neutral: [okay, average]}
model: {name: tiny}
"""
MASA_RECORD = {"id": "m1", "text": "Great pasta and wine, a steep bill, a plain room.",
               "labels": {"food_drinks": "positive", "price": "negative", "staff": "unmentioned",
                          "ambience": "neutral"},
               "rationales": {"food_drinks": "great pasta and wine", "price": "a steep bill",
                              "staff": "staff is not discussed", "ambience": "a plain room"}}
ENTITIES_YAML = """\
name: tiny_entities
type: entities
data: {root: ., train: entities.jsonl, eval_id: entities_dev.jsonl}
labels:
  slots: [person, organization, location]
model: {name: tiny}
"""
ENTITIES_RECORD = {"id": "e1", "text": "Dunhollow Bank opened an office in New Harl.",
                   "entities": [{"type": "organization", "span": "Dunhollow Bank"},
                                {"type": "location", "span": "Dunhollow"},
                                {"type": "location", "span": "New Harl"}],
                   "rationales": {"person": "no person is named", "organization": "a bank",
                                  "location": "two places"}}


def _write_task(folder: Path, name: str, yaml_text: str, record: dict[str, object]) -> Task:
    for split in (name, f"{name}_dev"):
        (folder / f"{split}.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    (folder / f"{name}.yaml").write_text(yaml_text, encoding="utf-8")
    return load_task(folder / f"{name}.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Task]:
    """A one-record MASA-like task (a two-word slot, number codes, synonyms) and a one-record entities task."""
    folder = tmp_path_factory.mktemp("tiny")
    return {"masa": _write_task(folder, "masa", MASA_YAML, MASA_RECORD),
            "entities": _write_task(folder, "entities", ENTITIES_YAML, ENTITIES_RECORD)}


def _edit(units: list[Unit], key: str, *, new_key: str | None = None, value: str | None = None) -> list[Unit]:
    """The units with one unit's key and/or (single) value rewritten."""
    return [dataclasses.replace(u, key=new_key or u.key, values=u.values if value is None else (value,))
            if u.key == key else u for u in units]


def _extra(design: Design, key: str, *values: str) -> Unit:
    """One more unit, with a rationale when the design writes one."""
    return Unit(key, values, None if design.reasoning == "none" else "the review says so")


def _broken(text: str, fmt: str, key: str) -> str:
    """The unit of ``key`` with its syntax broken: the colon dropped, or the JSON object's closing brace."""
    if fmt == "json":
        lines = text.split("\n")
        return "\n".join(line[:-1] if str(next(iter(json.loads(line).values()))) == key else line for line in lines)
    return text.replace(f"{key}: ", f"{key} ", 1)


def _trailing_sentence(text: str, fmt: str) -> str:
    """A sentence after the last unit, on its line (natural's answer already ends with a period)."""
    return text + (f" {CHATTER}" if fmt in ("natural", "json") else f". {CHATTER}")


def inject(defect: str, task: Task, design: Design) -> str:
    """The gold record's target under ``design`` with one MASA defect, written in the format's own syntax."""
    c = codec(task, design)
    units = to_units(task.splits["train"][0], task, design, c)
    code = c.value_code
    edited = {
        "exact": units,
        "label_spaces": _edit(units, "food_drinks", value=f"  {code('positive')} "),
        "label_case": _edit(units, "food_drinks", value="Positive"),
        "label_synonym": _edit(units, "food_drinks", value="good"),
        "number_plus": _edit(units, "food_drinks", value="+1"),
        "number_float": _edit(units, "price", value="-1.0"),
        "soft_key": _edit(units, "food_drinks", new_key="food"),
        "key_case": _edit(units, "price", new_key="PRICE"),
        "repeated_slot": [*units, _extra(design, "food_drinks", code("negative"))],
        "unknown_key": [*units, _extra(design, "parking", code("positive"))],
        "unknown_label": _edit(units, "food_drinks", value="fantastic"),
        "missing_slot": [u for u in units if u.key != "price"],
        "missing_unmentioned_slot": [u for u in units if u.key != "staff"],
    }.get(defect, units)
    text = FORMATS[design.output_format].render(edited, design, c)
    if defect == "trailing_line":
        return f"{text}\n{CHATTER}"
    if defect == "trailing_sentence":
        return _trailing_sentence(text, design.output_format)
    if defect == "broken_unit":
        return _broken(text, design.output_format, "price")
    return text


MASA_GOLD = {"food_drinks": ("positive",), "price": ("negative",), "staff": UNM, "ambience": ("neutral",)}


def expected(defect: str, design: Design) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...], bool]:
    """(answer, error kinds, repaired) the policy gives a MASA defect, whatever the format."""
    number, placeholder = design.label_style == "number", design.unmentioned == "placeholder"
    gold = MASA_GOLD
    if defect in ("exact", "label_spaces"):
        return gold, (), False
    if defect in ("label_case", "label_synonym", "soft_key", "key_case"):
        return gold, (), True
    if defect in ("number_plus", "number_float"):
        slot = "food_drinks" if defect == "number_plus" else "price"
        return (gold, (), True) if number else ({**gold, slot: UNM}, ("label_error",), False)
    if defect == "repeated_slot":
        return gold, ("repeated_slot",), False
    if defect in ("trailing_line", "trailing_sentence"):
        return gold, ("trailing_text",), False
    if defect == "unknown_key":
        return gold, ("check_error",), False
    if defect == "unknown_label":
        return {**gold, "food_drinks": UNM}, ("label_error",), False
    if defect == "missing_slot":
        return {**gold, "price": UNM}, ("missing_slot",) if placeholder else (), False
    if defect == "missing_unmentioned_slot":
        return gold, ("missing_slot",) if placeholder else (), False
    assert defect == "broken_unit"
    return gold, ("split_error",), True


MASA_DEFECTS = ("exact", "label_spaces", "label_case", "label_synonym", "number_plus", "number_float", "soft_key",
                "key_case", "repeated_slot", "trailing_line", "trailing_sentence", "unknown_key", "unknown_label",
                "missing_slot", "missing_unmentioned_slot", "broken_unit")


def _design(fmt: str, label_style: str, unmentioned: str, reasoning: str) -> Design:
    return parse_design(f"output_format={fmt},label_style={label_style},unmentioned={unmentioned},"
                        f"reasoning={reasoning}")


def _skip_known_limit(defect: str, reasoning: str) -> None:
    if defect == "trailing_sentence" and reasoning == "reverse_cot":
        pytest.skip("under reverse CoT a same-line sentence after the last rationale is read as rationale "
                    "in natural/lines (README: known limit)")


def _triple(p: Parsed) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...], bool]:
    return p.answer, p.errors, p.repaired


@pytest.mark.parametrize("reasoning", REASONING)
@pytest.mark.parametrize("unmentioned", ["placeholder", "omit"])
@pytest.mark.parametrize("label_style", ["text", "number"])
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("defect", MASA_DEFECTS)
def test_masa_defect_parses_to_the_policy(defect: str, fmt: str, label_style: str, unmentioned: str,
                                          reasoning: str, tiny: dict[str, Task]) -> None:
    _skip_known_limit(defect, reasoning)
    design = _design(fmt, label_style, unmentioned, reasoning)
    text = inject(defect, tiny["masa"], design)
    assert _triple(parse(text, design, tiny["masa"])) == expected(defect, design), text


@pytest.mark.parametrize("reasoning", REASONING)
@pytest.mark.parametrize("unmentioned", ["placeholder", "omit"])
@pytest.mark.parametrize("label_style", ["text", "number"])
@pytest.mark.parametrize("defect", MASA_DEFECTS)
def test_masa_defect_parses_alike_in_every_format(defect: str, label_style: str, unmentioned: str, reasoning: str,
                                                  tiny: dict[str, Task]) -> None:
    _skip_known_limit(defect, reasoning)
    results = {}
    for fmt in FORMAT_NAMES:
        design = _design(fmt, label_style, unmentioned, reasoning)
        results[fmt] = _triple(parse(inject(defect, tiny["masa"], design), design, tiny["masa"]))
    assert results["natural"] == results["lines"] == results["json"], results


# --- multi-valued slots (entities) ------------------------------------------------------------------------------------

ENT_GOLD = {"person": (), "organization": ("Dunhollow Bank",), "location": ("Dunhollow", "New Harl")}
ENT_DEFECTS = ("exact", "repeated_slot", "repeated_same_values", "trailing_line", "unknown_key", "slot_name_key",
               "placeholder_case", "broken_unit")


def inject_entities(defect: str, task: Task, design: Design) -> str:
    """The gold entities target with one defect, in the format's own syntax."""
    c = codec(task, design)
    units = to_units(task.splits["train"][0], task, design, c)
    org, loc, person = (c.slot_key(s) for s in ("organization", "location", "person"))
    edited = {
        "repeated_slot": [*units, _extra(design, loc, "New Harl", "Kestrel")],
        "repeated_same_values": [*units, _extra(design, org, "Dunhollow Bank")],
        "unknown_key": [*units, _extra(design, "date", "Monday")],
        "slot_name_key": _edit(units, org, new_key="organization"),
        "placeholder_case": _edit(units, person, value="None"),
    }.get(defect, units)
    text = FORMATS[design.output_format].render(edited, design, c)
    if defect == "trailing_line":
        return f"{text}\n{CHATTER}"
    if defect == "broken_unit":
        return (_broken(text, "json", loc) if design.output_format == "json"
                else text.replace(f"{loc}: ", f"{loc} - ", 1))
    return text


def expected_entities(defect: str, design: Design) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...], bool]:
    number, placeholder = design.label_style == "number", design.unmentioned == "placeholder"
    return {
        "exact": (ENT_GOLD, (), False),
        "repeated_slot": ({**ENT_GOLD, "location": ("Dunhollow", "New Harl", "Kestrel")}, ("repeated_slot",), False),
        "repeated_same_values": (ENT_GOLD, ("repeated_slot",), False),
        "trailing_line": (ENT_GOLD, ("trailing_text",), False),
        "unknown_key": (ENT_GOLD, ("check_error",), False),
        "slot_name_key": (ENT_GOLD, (), number),  # names are the codes under text labels
        "placeholder_case": (ENT_GOLD, (), placeholder),  # under omit the empty slot is not written at all
        "broken_unit": (ENT_GOLD, ("split_error",), True),
    }[defect]


@pytest.mark.parametrize("reasoning", ["none", "cot"])
@pytest.mark.parametrize("unmentioned", ["placeholder", "omit"])
@pytest.mark.parametrize("label_style", ["text", "number"])
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("defect", ENT_DEFECTS)
def test_entities_defect_parses_to_the_policy(defect: str, fmt: str, label_style: str, unmentioned: str,
                                              reasoning: str, tiny: dict[str, Task]) -> None:
    design = _design(fmt, label_style, unmentioned, reasoning)
    text = inject_entities(defect, tiny["entities"], design)
    assert _triple(parse(text, design, tiny["entities"])) == expected_entities(defect, design), text


# --- the pieces of the policy -----------------------------------------------------------------------------------------


def test_the_gold_renders_and_round_trips(tiny: dict[str, Task]) -> None:
    for name, gold in (("masa", MASA_GOLD), ("entities", ENT_GOLD)):
        task = tiny[name]
        assert task.gold(task.splits["train"][0], "train") == gold
        design = Design(output_format="natural", reasoning="cot")
        assert _triple(parse(render(task.splits["train"][0], design, task).target, design, task)) == (gold, (), False)


def _masa_codec(*slots: str, number: bool = False) -> Codec:
    codes = {"positive": "1", "negative": "-1", "neutral": "0", "unmentioned": "-2"}
    return Codec(slots, False, "unmentioned", str, (lambda v: codes[v]) if number else str,
                 ("positive", "negative", "neutral", "unmentioned"), {"good": "positive"}, "aspect", "label", "")


@pytest.mark.parametrize(("written", "read"), [
    ("food", ("food", False)), ("Food", ("food", True)), ('"food"', ("food", True)), ("**price**", ("price", True)),
    ("food and drinks", ("food_drinks", True)), ("drinks", ("food_drinks", True)), ("prices", ("price", True)),
    ("food quality", ("food", True)), ("k", (None, False)), ("food and price", (None, False)), ("", (None, False)),
])
def test_slot_keywords_match_whole_words_and_are_repairs(written: str, read: tuple[str | None, bool]) -> None:
    assert _masa_codec("food", "food_drinks", "price").read_key(written) == read


@pytest.mark.parametrize(("written", "number", "read"), [
    ("1", True, ("positive", False, False)), (" 1 ", True, ("positive", False, False)),
    ("+1", True, ("positive", True, False)), ("1.0", True, ("positive", True, False)),
    ("-1.00", True, ("negative", True, False)), ("1.", True, ("positive", True, False)),
    ("Positive", True, ("positive", True, False)), ("good", True, ("positive", True, False)),
    ("5", True, (None, False, False)), ("positive", False, ("positive", False, False)),
    ("POSITIVE", False, ("positive", True, False)), ("'positive'", False, ("positive", True, False)),
    ("+1", False, (None, False, False)), ("positive. Hope this helps!", False, ("positive", False, True)),
    ("-2. That is all.", True, ("unmentioned", False, True)), ("positive, I think", False, (None, False, False)),
])
def test_label_variants(written: str, number: bool, read: tuple[str | None, bool, bool]) -> None:
    assert _masa_codec("food", number=number).read_label(written) == read


def test_chatter_that_starts_with_a_slot_name_is_not_rescued(tiny: dict[str, Task]) -> None:
    design = Design(output_format="lines")
    text = inject("exact", tiny["masa"], design) + "\nPrice was fair overall."
    assert _triple(parse(text, design, tiny["masa"])) == (MASA_GOLD, ("trailing_text",), False)


def test_a_generation_with_no_unit_is_a_split_error_not_trailing_text(tiny: dict[str, Task]) -> None:
    parsed = parse(CHATTER, Design(unmentioned="omit"), tiny["masa"])
    assert (parsed.errors, parsed.answer) == (("split_error",), dict.fromkeys(MASA_GOLD, UNM))


def test_chatter_after_a_bare_none_is_trailing_text(tiny: dict[str, Task]) -> None:
    parsed = parse(f"none\n{CHATTER}", Design(unmentioned="omit"), tiny["masa"])
    assert parsed.errors == ("trailing_text",)


def test_repair_rate() -> None:
    assert repair_rate([True, False, False, True]) == 0.5
    assert repair_rate([False]) == 0.0
    assert math.isnan(repair_rate([]))
