"""Renderers: a record under one design -> (prompt, target); parsing it back lives in :mod:`sde_search.parse`.

Every output format lives in ``FORMATS`` as a pair (render, parse) so that the
two are written side by side and round-trip tested. A target is a sequence of
*units*, one per slot: ``slot: values`` with an optional rationale
(``slot: rationale => values`` for CoT, ``slot: values <= rationale`` for
reverse CoT). ``natural`` joins units on one line, ``lines`` puts one per line,
``json`` writes one JSON object per unit per line. In ``natural`` and ``lines`` a value holding a separator
(``,``, ``;``, ``=>``, ``<=``, a double quote, a line break) is written as a JSON string, ``"Portsmouth ,
United Kingdom"``, and the instruction says so when the task's data holds one; ``json`` needs no rule.
``parse``, ``Parsed``, ``codec`` and ``NOTHING`` are re-exported from :mod:`sde_search.parse`.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sde_search.config import Task
from sde_search.design import Design
from sde_search.parse import (
    COT,
    NOTHING,
    REVERSE,
    Codec,
    Parsed,
    Parser,
    codec,
    json_fields,
    natural_joiner,
    needs_quotes,
    parse,
    parse_json,
    parse_lines,
    parse_natural,
    quoted,
)
from sde_search.tasks import Record

__all__ = ["COT", "FORMATS", "NOTHING", "REVERSE", "Codec", "Format", "Parsed", "Sample", "Unit", "codec",
           "parse", "render"]


@dataclass(frozen=True)
class Sample:
    """One rendered sample; the model trains on ``prompt + target`` and the loss boundary is ``len(prompt)``."""

    prompt: str
    target: str


@dataclass(frozen=True)
class Unit:
    """One slot of a target: its written key, written values and optional rationale."""

    key: str
    values: tuple[str, ...]
    rationale: str | None = None


# ---------------------------------------------------------------- units


def to_units(record: Record, task: Task, design: Design, c: Codec) -> list[Unit]:
    """The units a record's target holds under a design (empty slots kept or dropped)."""
    gold = task.kind.gold(record, c.slots, c.unmentioned)
    units = []
    for slot in c.slots:
        values = gold[slot]
        empty = task.kind.is_empty(values, c.unmentioned)
        if empty and design.unmentioned == "omit":
            continue
        written = (c.value_code(c.unmentioned),) if empty else tuple(c.value_code(v) for v in values)
        rationale = record.rationales.get(slot, "") if design.reasoning != "none" else None
        units.append(Unit(c.slot_key(slot), written, rationale))
    return units


def _unit_text(u: Unit, reasoning: str) -> str:
    """``key: values`` with the rationale; a value or rationale holding a separator is a JSON string."""
    values = ", ".join(quoted(v) for v in u.values)
    if u.rationale is None:
        return f"{u.key}: {values}"
    why = quoted(str(u.rationale), reason=True)  # a rationale is data: a number there is written as before
    return f"{u.key}: {why}{COT}{values}" if reasoning == "cot" else f"{u.key}: {values}{REVERSE}{why}"


# ---------------------------------------------------------------- formats


def render_natural(units: Sequence[Unit], design: Design, c: Codec) -> str:
    """All units on one line, ending with a period."""
    return natural_joiner(c).join(_unit_text(u, design.reasoning) for u in units) + "."


def render_lines(units: Sequence[Unit], design: Design, c: Codec) -> str:
    """One unit per line."""
    return "\n".join(_unit_text(u, design.reasoning) for u in units)


def _json_value(value: str) -> int | str:
    return int(value) if re.fullmatch(r"-?\d+", value) else value


def render_json(units: Sequence[Unit], design: Design, c: Codec) -> str:
    """One JSON object per unit per line; the rationale field goes before or after the value."""
    slot_field, value_field = json_fields(c)
    lines = []
    for u in units:
        key: int | str = _json_value(u.key)
        placeholder = u.values == (c.value_code(c.unmentioned),)
        value: Any = ([] if placeholder else list(u.values)) if c.multi else _json_value(u.values[0])
        obj: dict[str, Any] = {slot_field: key}
        if design.reasoning == "cot":
            obj["rationale"] = u.rationale
        obj[value_field] = value
        if design.reasoning == "reverse_cot":
            obj["rationale"] = u.rationale
        lines.append(json.dumps(obj, ensure_ascii=False))
    return "\n".join(lines)


Renderer = Callable[[Sequence[Unit], Design, Codec], str]


@dataclass(frozen=True)
class Format:
    """A renderer and its parser."""

    render: Renderer
    parse: Parser


FORMATS: dict[str, Format] = {
    "natural": Format(render_natural, parse_natural),
    "lines": Format(render_lines, parse_lines),
    "json": Format(render_json, parse_json),
}


# ---------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Quoting:
    """What a task's data holds that ``natural`` and ``lines`` write as a JSON string (see :func:`quoting`)."""

    values: bool = False
    reasons: bool = False


_QUOTING: dict[int, tuple[weakref.ref[Task], Quoting]] = {}


def quoting(task: Task) -> Quoting:
    """Whether any record of any split holds a value or a rationale that must be quoted (cached per task).

    Every split is read, so that training and test prompts state the same rule; a task whose data holds no
    such value keeps its instruction as it was.
    """
    hit = _QUOTING.get(id(task))
    if hit is not None and hit[0]() is task:
        return hit[1]
    records = [r for split in task.splits.values() for r in split]
    found = Quoting(
        values=any(needs_quotes(v) for r in records for values in r.answer.values() for v in values),
        reasons=any(needs_quotes(str(t), reason=True) for r in records for t in r.rationales.values()))
    key = id(task)
    _QUOTING[key] = (weakref.ref(task, lambda _: _QUOTING.pop(key, None)), found)
    return found


def _quote_rule(design: Design, c: Codec, q: Quoting) -> str:
    """The sentence stating the quoting rule, when the design's format and the task's data need it."""
    reasons = q.reasons and design.reasoning != "none"
    if design.output_format == "json" or not (q.values or reasons):
        return ""
    what = [f'any {c.value_noun} that holds a comma, ";", "=>", "<=" or a double quote'] if q.values else []
    what += ["any reason that holds a double quote"] if reasons else []
    return f' Write {", and ".join(what)}, as a JSON string ("...", with \\" for a quote).'


def format_spec(design: Design, c: Codec, q: Quoting = Quoting()) -> str:
    """The design-derived output description embedded in the instruction (with the quoting rule ``q`` needs)."""
    s, v = c.slot_noun, c.value_noun
    vals = f"{v}, {v}" if c.multi else v
    unit = {"none": f"{s}: {vals}", "cot": f"{s}: reason => {vals}", "reverse_cot": f"{s}: {vals} <= reason"}
    unit_text = unit[design.reasoning]
    layout = {
        "natural": f'Answer on one line: "{unit_text}{natural_joiner(c)}...".',
        "lines": f'Write one "{unit_text}" line per {s}.',
        "json": f"Write one JSON object per {s} per line with the fields "
                f"{', '.join(_json_field_order(design, c))}.",
    }[design.output_format]
    empty = "[]" if c.multi and design.output_format == "json" else c.value_code(c.unmentioned)
    missing = (f"Write {empty} for any {s} that has no {v}." if design.unmentioned == "placeholder"
               else f"Skip {s}s with no {v}; write {NOTHING} if there is nothing.")
    return f"{layout} {missing}{_quote_rule(design, c, q)}"


def _json_field_order(design: Design, c: Codec) -> list[str]:
    slot_field, value_field = json_fields(c)
    middle = {"none": [value_field], "cot": ["rationale", value_field], "reverse_cot": [value_field, "rationale"]}
    return [slot_field, *middle[design.reasoning]]


def instruction_text(task: Task, design: Design, c: Codec, template: str | None = None) -> str:
    """Fills the instruction template for a design (slot list, label list, format spec)."""
    template = template or task.config.template.instruction or task.kind.default_instruction
    if c.multi and design.label_style == "number":
        slots = ", ".join(f"{c.slot_key(s)}={s}" for s in c.slots)
    else:
        slots = ", ".join(c.slots)
    if design.label_style == "number" and not c.multi:
        labels = ", ".join(f"{label}={c.value_code(label)}" for label in c.labels)
    else:
        labels = ", ".join(c.labels)
    return template.format(slots=slots, labels=labels, format=format_spec(design, c, quoting(task))).strip()


def build_prompt(text: str, instruction: str, design: Design, task: Task) -> str:
    """Lays out instruction, input and output cue; the prompt ends with a newline."""
    sep, cue = task.config.template.separator, task.config.template.output_cue
    if design.instruction == "first":
        return f"{instruction}\n{sep}\n{text}\n{cue}\n"
    if design.instruction == "last":
        return f"{text}\n{sep}\n{instruction}\n{cue}\n"
    return f"{text}\n{cue}\n"


def render(record: Record, design: Design, task: Task, *, ood: bool = False, instruction: str | None = None) -> Sample:
    """Renders one record under one design.

    Args:
        record: The record.
        design: The sample design.
        task: The loaded task (schema and template).
        ood: Render against the OOD slot list.
        instruction: An alternative instruction template (e.g. a paraphrase).

    Returns:
        The prompt and the target.
    """
    c = codec(task, design, ood=ood, slots=record.slots)
    units = to_units(record, task, design, c)
    target = FORMATS[design.output_format].render(units, design, c) if units else NOTHING
    prompt = build_prompt(record.text, instruction_text(task, design, c, instruction), design, task)
    return Sample(prompt, target)
