"""Codes of number labels (``label_style: number``): given, partly given or none, every label gets one.

The rule (``labels.numbers`` in ``config/schema.py`` and the README): given codes are kept; a label named as in the
paper gets the paper's code when it is free; every other label the smallest free whole number from 0 up, in
``labels.values`` order with the unmentioned label last. Five labels (SemEval's ``conflict`` added) are the case
that used to stop with a hint that named only four.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sde_search import cli
from sde_search.config import ConfigError, LabelsConfig, check_design, label_codes, load_task
from sde_search.design import parse_design
from sde_search.render import parse, render

ROOT = Path(__file__).resolve().parents[1]
MASA = ROOT / "examples" / "demo_masa.yaml"
FIVE = ["positive", "negative", "neutral", "conflict", "unmentioned"]
FIVE_VALUES = "labels.values=[positive, negative, neutral, conflict]"
SMALL = ["data.max_train=20", "data.max_eval=5", "data.max_test=5"]
NUMBER = parse_design("label_style=number")


@pytest.mark.parametrize(("labels", "given", "expected"), [
    (FIVE, {}, {"positive": 1, "negative": -1, "neutral": 0, "conflict": 2, "unmentioned": -2}),
    (FIVE, {"positive": 1, "neutral": 0, "negative": -1, "unmentioned": -2},
     {"positive": 1, "negative": -1, "neutral": 0, "conflict": 2, "unmentioned": -2}),
    (FIVE, {"conflict": 0}, {"positive": 1, "negative": -1, "neutral": 2, "conflict": 0, "unmentioned": -2}),
    (FIVE, {"positive": 5, "conflict": 1}, {"positive": 5, "negative": -1, "neutral": 0, "conflict": 1,
                                            "unmentioned": -2}),
    (["good", "bad", "meh", "none"], {}, {"good": 0, "bad": 1, "meh": 2, "none": 3}),
    (["good", "bad", "meh", "none"], {"bad": 0}, {"good": 1, "bad": 0, "meh": 2, "none": 3}),
    (["a", "b", "c"], {"a": 1, "b": 2, "c": 0, "gone": 7}, {"a": 1, "b": 2, "c": 0}),
])
def test_given_codes_are_kept_and_the_rest_follow_the_rule(labels: list[str], given: dict[str, int],
                                                          expected: dict[str, int]) -> None:
    codes = label_codes(labels, given)
    assert codes == expected
    assert list(codes) == labels  # every label, in order, nothing else
    assert len(set(codes.values())) == len(labels)


def test_the_rule_is_documented_where_the_key_is() -> None:
    description = LabelsConfig.model_fields["numbers"].description or ""
    assert "smallest free" in description and "unmentioned label last" in description
    assert "smallest free whole number from 0 up" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("numbers", ["labels.numbers={}",
                                     "labels.numbers={positive: 1, neutral: 0, negative: -1, unmentioned: -2}"])
def test_a_five_label_task_gets_a_code_for_every_label(numbers: str) -> None:
    task = load_task(MASA, [*SMALL, FIVE_VALUES, numbers])
    assert task.config.labels.numbers == {"positive": 1, "negative": -1, "neutral": 0, "conflict": 2,
                                          "unmentioned": -2}
    check_design(task, NUMBER, "--design label_style=number")  # used to stop: numbers missing or incomplete
    record = task.splits["train"][0]
    sample = render(record, NUMBER, task)
    assert "conflict=2" in sample.prompt and "unmentioned=-2" in sample.prompt
    assert parse(sample.target, NUMBER, task, slots=record.slots).answer == task.gold(record, "train")
    slot, *rest = record.slots or task.slots
    answer = parse("\n".join([f"{slot}: 2", *(f"{s}: -2" for s in rest)]), NUMBER, task, slots=record.slots)
    assert answer.answer[slot] == ("conflict",) and not answer.errors


def test_text_labels_and_entity_tasks_are_untouched() -> None:
    given = load_task(MASA, SMALL)
    assert given.config.labels.numbers == {"positive": 1, "negative": -1, "neutral": 0, "unmentioned": -2}
    entities = load_task(ROOT / "examples" / "demo_entities.yaml", ["data.max_train=5", "data.max_eval=5"])
    assert entities.config.labels.numbers == {}  # their number style writes the type's index


def test_codes_given_twice_are_refused_with_a_mapping_for_every_label() -> None:
    with pytest.raises(ConfigError) as err:
        load_task(MASA, [*SMALL, FIVE_VALUES,
                         "labels.numbers={positive: 1, neutral: 0, negative: -1, conflict: 0, unmentioned: -2}"])
    message = str(err.value)
    assert "labels.numbers: codes [0] are given to several labels" in message
    hint = message.split("e.g. numbers: ", 1)[1]
    assert hint.startswith("{positive: 1, negative: -1, neutral: 0, conflict: 2, unmentioned: -2}")
    assert all(f"{label}: " in hint for label in FIVE)


def test_a_code_for_an_unknown_label_names_every_label() -> None:
    with pytest.raises(ConfigError, match=r"labels\.numbers: \['conflict'\] are not labels \(allowed: "
                                          r"\['positive', 'negative', 'neutral', 'unmentioned'\]\)"):
        load_task(MASA, [*SMALL, "labels.numbers={conflict: 2}"])


def test_check_prints_every_code_for_number_designs(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--task", str(MASA), "--check", *(a for s in SMALL for a in ("--set", s)), "--set", FIVE_VALUES,
            "--set", "labels.numbers={}"]
    assert cli.main([*args, "--design", "label_style=number"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("label codes"))
    assert line.endswith("{positive: 1, negative: -1, neutral: 0, conflict: 2, unmentioned: -2}")
    assert "conflict=2" in out  # the number design's render lists it too
    assert cli.main([*args, "--space", str(ROOT / "search_spaces" / "sde_chat.yaml")]) == 0
    assert "label codes" not in capsys.readouterr().out  # a text-only space: no codes to show
