"""Values holding the formats' separators read back under every design (sde-search issue 17, item 3).

The fixture task ``tests/quoting/`` names entities such as ``Portsmouth , United Kingdom``, ``Paris; Texas``,
``x => y``, ``"Blue Note"`` and ``C:\\dir\\``, with rationales holding commas, colons, arrows and quotes.
``natural`` and ``lines`` write such a value as a JSON string; ``json`` keeps it a plain list item.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from sde_search import render_check
from sde_search.cli import main
from sde_search.config import Task, load_task
from sde_search.design import ES_SDE, Design, all_designs, parse_design
from sde_search.parse import needs_quotes, quoted
from sde_search.render import Quoting, parse, quoting, render
from sde_search.tasks import Record

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "quoting" / "entities.yaml"
ALL = list(all_designs())
LINES = ES_SDE
NATURAL = parse_design("output_format=natural")
JSON = parse_design("output_format=json")


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task(FIXTURE)


def _record(task: Task, rid: str) -> Record:
    return next(r for split in task.splits.values() for r in split if r.id == rid)


def _write_task(folder: Path, yaml_text: str, rows: list[dict[str, object]]) -> Path:
    """The task file, a copy of the fixture's space and ``rows`` as both splits (each slot gets a rationale)."""
    slots = yaml.safe_load(yaml_text)["labels"]["slots"]
    rows = [{"rationales": {s: "the text says so" for s in slots}, **r} for r in rows]
    for name in ("train", "dev"):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "space.yaml").write_text((FIXTURE.parent / "space.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    path = folder / "task.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    return path


# --- every record, every design ---------------------------------------------------------------------------------


def test_the_fixture_holds_every_separator(task: Task) -> None:
    values = [v for split in task.splits.values() for r in split for vs in r.answer.values() for v in vs]
    for needle in (", ", ",", ";", ":", "=>", "<=", '"', "\\"):
        assert any(needle in v for v in values), needle
    assert any(not needs_quotes(v) for v in values)  # plain values too


@pytest.mark.parametrize("design", ALL, ids=[d.short() for d in ALL])
def test_every_record_round_trips(design: Design, task: Task) -> None:
    for split, records in task.splits.items():
        for record in records:
            sample = render(record, design, task)
            parsed = parse(sample.target, design, task, slots=record.slots)
            where = f"{split} {record.id}\n{sample.target}"
            assert parsed.errors == (), where
            assert parsed.status == "ok", where
            assert parsed.answer == task.gold(record, split), where


def test_a_target_depends_only_on_the_layout_dimensions(task: Task) -> None:
    """--check reads each record once per layout; that is only sound while no other dimension changes a target."""
    targets: dict[Design, set[str]] = defaultdict(set)
    for design in ALL:
        for record in task.splits["train"]:
            targets[render_check.layout(design), record.id].add(render(record, design, task).target)
    assert all(len(t) == 1 for t in targets.values())
    assert len({layout for layout, _ in targets}) == 36


# --- how values are written ------------------------------------------------------------------------------------


def test_values_with_separators_are_quoted_and_plain_ones_are_not(task: Task) -> None:
    target = render(_record(task, "q2"), LINES, task).target
    assert target.splitlines() == ['organization: "Smith, Jones & Co."', 'location: "Paris; Texas", Oslo',
                                   "misc: none"]
    assert render(_record(task, "q6"), LINES, task).target == "organization: Acme\nlocation: Oslo\nmisc: none"
    natural = render(_record(task, "q1"), NATURAL, task).target
    assert natural == 'organization: none; location: "Portsmouth , United Kingdom"; misc: none.'


def test_quotes_and_backslashes_are_escaped_as_in_json(task: Task) -> None:
    target = render(_record(task, "q5"), LINES, task).target
    assert 'misc: C:\\dir\\, "\\"say \\\\\\"hi\\\\\\"\\""' in target.splitlines()
    assert quoted('say "hi"') == '"say \\"hi\\""' and quoted("Oslo") == "Oslo"
    assert quoted("a, b", reason=True) == "a, b" and quoted('a "b"', reason=True) == '"a \\"b\\""'


def test_json_lists_stay_json_lists(task: Task) -> None:
    lines = [json.loads(line) for line in render(_record(task, "q2"), JSON, task).target.splitlines()]
    assert lines[0] == {"type": "organization", "entities": ["Smith, Jones & Co."]}
    assert lines[1] == {"type": "location", "entities": ["Paris; Texas", "Oslo"]}
    parsed = parse('{"type": "location", "entities": ["Portsmouth , United Kingdom", "Oslo"]}', JSON, task)
    assert parsed.answer["location"] == ("Portsmouth , United Kingdom", "Oslo") and parsed.status == "failed"
    assert parsed.errors == ("missing_slot",)  # only the slots not written; the list itself reads as two values


# --- the parser ---------------------------------------------------------------------------------------------------


OMIT = {"lines": parse_design("unmentioned=omit"), "natural": parse_design("output_format=natural,unmentioned=omit"),
        "cot": parse_design("unmentioned=omit,reasoning=cot"),
        "reverse": parse_design("unmentioned=omit,reasoning=reverse_cot")}


@pytest.mark.parametrize(("design", "text", "slot", "values", "status"), [
    ("lines", 'location: "Portsmouth , United Kingdom", Oslo', "location", ("Portsmouth , United Kingdom", "Oslo"),
     "ok"),
    ("lines", 'misc: "say \\"hi\\"", "a\\\\b, c"', "misc", ('say "hi"', "a\\b, c"), "ok"),
    ("lines", "location: Portsmouth , United Kingdom", "location", ("Portsmouth", "United Kingdom"), "ok"),
    ("lines", 'location: "Oslo"', "location", ("Oslo",), "repaired"),
    ("lines", 'location: "Oslo, Lyon', "location", ('"Oslo', "Lyon"), "ok"),
    ("lines", 'location: "none"', "location", (), "repaired"),  # the placeholder, as before quoting existed
    ("natural", 'organization: "A; location: B"; location: C.', "organization", ("A; location: B",), "ok"),
    ("natural", 'organization: "A; location: B"; location: C.', "location", ("C",), "ok"),
    ("cot", 'misc: arrows => here => "x => y", "a <= b"', "misc", ("x => y", "a <= b"), "ok"),
    ("reverse", 'misc: "a <= b" <= it says a <= b', "misc", ("a <= b",), "ok"),
    ("cot", 'misc: "he said \\"x => y\\"" => Acme', "misc", ("Acme",), "ok"),
])
def test_the_parser_reads_quoted_values(design: str, text: str, slot: str, values: tuple[str, ...], status: str,
                                        task: Task) -> None:
    parsed = parse(text, OMIT[design], task)
    assert parsed.answer[slot] == values
    assert parsed.status == status, parsed.errors


def test_a_label_with_separators_round_trips(tmp_path: Path) -> None:
    path = _write_task(tmp_path, """\
name: quoted_labels
type: aspect_sentiment
data: {root: ., train: train.jsonl, eval_id: dev.jsonl}
labels:
  slots: [food, price]
  values: [good, "so-so, mixed", 'bad "really"']
  unmentioned: unmentioned
  numbers: {good: 1, "so-so, mixed": 0, 'bad "really"': -1, unmentioned: -2}
model: {name: tiny}
search_space: space.yaml
""", [{"id": "m1", "text": "Fine food, odd prices.", "labels": {"food": "so-so, mixed", "price": 'bad "really"'},
       "rationales": {"food": "fine, odd", "price": "odd"}}])
    task = load_task(path)
    assert quoting(task) == Quoting(values=True)
    record = task.splits["train"][0]
    assert render(record, NATURAL, task).target == 'food: "so-so, mixed", price: "bad \\"really\\"".'
    for design in ALL:
        sample = render(record, design, task)
        parsed = parse(sample.target, design, task)
        assert (parsed.status, parsed.answer) == ("ok", task.gold(record, "train")), (design.short(), sample.target)


# --- the instruction ---------------------------------------------------------------------------------------------


def test_the_instruction_states_the_rule_where_it_applies(task: Task) -> None:
    record = task.splits["train"][0]
    assert quoting(task) == Quoting(values=True, reasons=True)
    rule = 'Write any entity that holds a comma, ";", "=>", "<=" or a double quote, as a JSON string'
    for design in (LINES, NATURAL):
        assert rule in render(record, design, task).prompt
    assert "JSON string" not in render(record, JSON, task).prompt
    cot = render(record, parse_design("reasoning=cot"), task).prompt
    assert "and any reason that holds a double quote, as a JSON string" in cot


@pytest.mark.parametrize("name", ["masa", "entities", "events"])
def test_ordinary_data_keeps_its_instruction(name: str) -> None:
    """The demos hold no value to quote: no rule in the prompt, so their renders (and goldens) are unchanged."""
    task = load_task(ROOT / "examples" / f"demo_{name}.yaml")
    assert quoting(task) == Quoting()
    assert all("JSON string" not in render(task.splits["train"][0], d, task).prompt for d in (LINES, NATURAL))


# --- --check -------------------------------------------------------------------------------------------------------


def test_check_counts_every_record_of_every_split(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--task", str(FIXTURE), "--check"]) == 0
    out = capsys.readouterr().out
    assert "round trip: 0 of 7 train records fail under the 37 designs checked" in out
    assert "round trip: 0 of 2 eval_id records fail under the 37 designs checked" in out


def test_check_counts_records_that_do_not_read_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An entity named like the placeholder reads back as nothing: counted and shown, not refused."""
    rows = [{"id": "a", "text": "Acme is in Oslo.", "entities": [{"type": "organization", "span": "Acme"}]},
            {"id": "b", "text": "The band none played.", "entities": [{"type": "misc", "span": "none"}]}]
    path = _write_task(tmp_path, FIXTURE.read_text(encoding="utf-8"), rows)
    assert main(["--task", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("round trip: 1 of 2 train"))
    assert "(37 record x design pairs, under 37 designs" in line and "record b's target" in line


def test_a_design_that_cannot_represent_the_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yaml_text = FIXTURE.read_text(encoding="utf-8").replace("slots: [organization, location, misc]",
                                                          'slots: [organization, "place; area", misc]')
    rows = [{"id": "a", "text": "Acme is in Oslo.", "entities": [{"type": "place; area", "span": "Oslo"}]}]
    path = _write_task(tmp_path, yaml_text, rows)
    assert main(["--task", str(path), "--check"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "round trip FAILED under" in err and "cannot represent the data" in err and "rename it" in err
