"""Renderers and parsers: a record under one design -> (prompt, target), and generated text -> answer.

Every output format lives in ``FORMATS`` as a pair (render, parse) so that the
two are written side by side and round-trip tested. A target is a sequence of
*units*, one per slot: ``slot: values`` with an optional rationale
(``slot: rationale => values`` for CoT, ``slot: values <= rationale`` for
reverse CoT). ``natural`` joins units on one line, ``lines`` puts one per line,
``json`` writes one JSON object per unit per line.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sde_search.config import Task
from sde_search.design import Design
from sde_search.tasks import Record

NOTHING = "none"  # the whole target when ``unmentioned=omit`` leaves no unit
COT, REVERSE = " => ", " <= "


@dataclass(frozen=True)
class Sample:
    """One rendered sample; the model trains on ``prompt + target`` and the loss boundary is ``len(prompt)``."""

    prompt: str
    target: str


@dataclass(frozen=True)
class Parsed:
    """A parsed generation.

    Attributes:
        answer: Slot -> values on every slot (empty slots filled), scored even when errors occurred.
        errors: Error kinds (``empty``, ``json_error``, ``split_error``, ``check_error``, ``label_error``,
            ``missing_slot``); any error makes the sample a format error.
        repaired: Whether soft normalisation (synonyms, slot keywords, stray punctuation) was needed.
    """

    answer: dict[str, tuple[str, ...]]
    errors: tuple[str, ...] = ()
    repaired: bool = False

    @property
    def status(self) -> Literal["ok", "repaired", "failed"]:
        """``failed`` with any error, else ``repaired`` after soft normalisation, else ``ok``."""
        return "failed" if self.errors else ("repaired" if self.repaired else "ok")


@dataclass(frozen=True)
class Unit:
    """One slot of a target: its written key, written values and optional rationale."""

    key: str
    values: tuple[str, ...]
    rationale: str | None = None


@dataclass(frozen=True)
class Codec:
    """How slots and labels are written for one task, split and design (text or number codes)."""

    slots: tuple[str, ...]
    multi: bool
    unmentioned: str
    slot_key: Callable[[str], str]
    value_code: Callable[[str], str]
    labels: tuple[str, ...]
    synonyms: dict[str, str]
    slot_noun: str
    value_noun: str
    value_plural: str

    def decode_key(self, key: str) -> tuple[str | None, bool]:
        """Written key -> (slot or None, repaired)."""
        key = key.strip().strip('"').strip()
        by_code = {self.slot_key(s).lower(): s for s in self.slots}
        if key.lower() in by_code:
            return by_code[key.lower()], False
        matches = [s for s in self.slots if s.lower() in key.lower() or key.lower() in s.lower()] if key else []
        return (matches[0], True) if len(matches) == 1 else (None, False)

    def decode_label(self, value: str) -> tuple[str | None, bool]:
        """Written MASA label -> (label or None, repaired)."""
        value = value.strip().strip('."').strip().lower()
        by_code = {self.value_code(v).lower(): v for v in self.labels}
        if value in by_code:
            return by_code[value], False
        return (self.synonyms[value], True) if value in self.synonyms else (None, False)


def codec(task: Task, design: Design, *, ood: bool = False) -> Codec:
    """Builds the codec for a task's ID or OOD slots under a design."""
    labels_cfg = task.config.labels
    slots = task.ood_slots if ood else task.slots
    multi = task.kind.multi_valued
    numbers = {k: str(v) for k, v in labels_cfg.numbers.items()}
    by_number = design.label_style == "number"
    labels = tuple(labels_cfg.values) + (task.unmentioned,)
    synonyms = {s.lower(): label for label, words in labels_cfg.synonyms.items() for s in words}

    def slot_key(slot: str) -> str:
        return str(slots.index(slot)) if by_number and multi else slot

    def value_code(value: str) -> str:
        return numbers.get(value, value) if by_number and not multi else value

    return Codec(slots, multi, task.unmentioned, slot_key, value_code, labels, synonyms,
                 task.kind.slot_noun, task.kind.value_noun, task.kind.value_plural)


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
    values = ", ".join(u.values)
    if u.rationale is None:
        return f"{u.key}: {values}"
    return f"{u.key}: {u.rationale}{COT}{values}" if reasoning == "cot" else f"{u.key}: {values}{REVERSE}{u.rationale}"


def _split_unit(text: str, reasoning: str, keys: Sequence[str] = ()) -> tuple[str, str, bool] | None:
    """``key: rest`` -> (key, values text, separator found); None without a colon.

    A known key is matched first, so slot names that contain a colon (``Conflict:Attack``) survive.
    """
    stripped = text.strip()
    known = [k for k in keys if stripped.lower().startswith(k.lower() + ":")]
    if known:
        key = max(known, key=len)
        rest, sep = stripped[len(key) + 1:], ":"
    else:
        key, sep, rest = text.partition(":")
    if not sep:
        return None
    if reasoning == "cot":
        rationale, found, values = rest.rpartition(COT.strip())
        return key, (values if found else rest), bool(found)
    if reasoning == "reverse_cot":
        values, found, _ = rest.partition(REVERSE.strip())
        return key, values, bool(found)
    return key, rest, True


# ---------------------------------------------------------------- formats


def _natural_joiner(c: Codec) -> str:
    return "; " if c.multi else ", "


def render_natural(units: Sequence[Unit], design: Design, c: Codec) -> str:
    """All units on one line, ending with a period."""
    return _natural_joiner(c).join(_unit_text(u, design.reasoning) for u in units) + "."


def parse_natural(text: str, design: Design, c: Codec) -> tuple[list[tuple[str, str]], list[str]]:
    """Splits at the joiner only where a ``key:`` follows, so commas inside rationales survive."""
    body = text.strip().removesuffix(".")
    joiner = _natural_joiner(c).strip()
    parts = re.split(rf"{joiner}\s+(?=[^,;:=<>]{{1,60}}:)", body)
    return _units_from_parts(parts, design, c)


def render_lines(units: Sequence[Unit], design: Design, c: Codec) -> str:
    """One unit per line."""
    return "\n".join(_unit_text(u, design.reasoning) for u in units)


def parse_lines(text: str, design: Design, c: Codec) -> tuple[list[tuple[str, str]], list[str]]:
    """One unit per non-blank line."""
    return _units_from_parts([line for line in text.splitlines() if line.strip()], design, c)


def _units_from_parts(parts: Sequence[str], design: Design, c: Codec) -> tuple[list[tuple[str, str]], list[str]]:
    pairs, errors = [], []
    keys = [c.slot_key(s) for s in c.slots]
    for part in parts:
        split = _split_unit(part, design.reasoning, keys)
        if split is None:
            errors.append("split_error")
            continue
        key, values, found = split
        if not found:
            errors.append("split_error")
        pairs.append((key, values))
    return pairs, errors


def _json_keys(c: Codec) -> tuple[str, str]:
    return c.slot_noun, (c.value_plural if c.multi else c.value_noun)


def _json_value(value: str) -> int | str:
    return int(value) if re.fullmatch(r"-?\d+", value) else value


def render_json(units: Sequence[Unit], design: Design, c: Codec) -> str:
    """One JSON object per unit per line; the rationale field goes before or after the value."""
    slot_field, value_field = _json_keys(c)
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


_JSON_FIELD = r'"{}"\s*:\s*(\[[^\]]*\]|"[^"]*"|-?\d+)'


def _field_value(raw: str) -> Any:
    """A field matched by :data:`_JSON_FIELD`; a list broken inside (``["a", "b]``) keeps its text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw.strip("[]").replace('"', "")


def parse_json(text: str, design: Design, c: Codec) -> tuple[list[tuple[str, str]], list[str]]:
    """``json.loads`` per line (never eval); a broken line falls back to a regex with ``json_error``."""
    slot_field, value_field = _json_keys(c)
    pairs, errors = [], []
    for line in (ln for ln in text.splitlines() if ln.strip()):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or slot_field not in obj or value_field not in obj:
                raise ValueError("missing fields")
            key, value = obj[slot_field], obj[value_field]
        except (json.JSONDecodeError, ValueError):
            errors.append("json_error")
            found = [re.search(_JSON_FIELD.format(f), line) for f in (slot_field, value_field)]
            if not all(found):
                errors.append("split_error")
                continue
            key, value = (_field_value(m.group(1)) for m in found if m)
        values = value if isinstance(value, list) else [value]
        pairs.append((str(key), ", ".join(str(v) for v in values)))
    return pairs, errors


Renderer = Callable[[Sequence[Unit], Design, Codec], str]
Parser = Callable[[str, Design, Codec], tuple[list[tuple[str, str]], list[str]]]


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


def format_spec(design: Design, c: Codec) -> str:
    """The design-derived output description embedded in the instruction."""
    s, v = c.slot_noun, c.value_noun
    vals = f"{v}, {v}" if c.multi else v
    unit = {"none": f"{s}: {vals}", "cot": f"{s}: reason => {vals}", "reverse_cot": f"{s}: {vals} <= reason"}
    unit_text = unit[design.reasoning]
    layout = {
        "natural": f'Answer on one line: "{unit_text}{_natural_joiner(c)}...".',
        "lines": f'Write one "{unit_text}" line per {s}.',
        "json": f"Write one JSON object per {s} per line with the fields "
                f"{', '.join(_json_field_order(design, c))}.",
    }[design.output_format]
    empty = "[]" if c.multi and design.output_format == "json" else c.value_code(c.unmentioned)
    missing = (f"Write {empty} for any {s} that has no {v}." if design.unmentioned == "placeholder"
               else f"Skip {s}s with no {v}; write {NOTHING} if there is nothing.")
    return f"{layout} {missing}"


def _json_field_order(design: Design, c: Codec) -> list[str]:
    slot_field, value_field = _json_keys(c)
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
    return template.format(slots=slots, labels=labels, format=format_spec(design, c)).strip()


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
    c = codec(task, design, ood=ood)
    units = to_units(record, task, design, c)
    target = FORMATS[design.output_format].render(units, design, c) if units else NOTHING
    prompt = build_prompt(record.text, instruction_text(task, design, c, instruction), design, task)
    return Sample(prompt, target)


def parse(text: str, design: Design, task: Task, *, ood: bool = False) -> Parsed:
    """Parses a generation back into an answer on every slot (empty slots filled).

    Failed parses still return what could be read (the paper scores them); unknown keys
    are ``check_error``, unknown labels ``label_error`` (read as unmentioned).
    """
    c = codec(task, design, ood=ood)
    empty: tuple[str, ...] = () if c.multi else (c.unmentioned,)
    answer: dict[str, tuple[str, ...]] = {s: empty for s in c.slots}
    stripped = text.strip()
    if not stripped:
        return Parsed(answer, ("empty",))
    if stripped.lower().rstrip(".") == NOTHING:  # fine under omit; under placeholder every slot was owed
        return Parsed(answer, ("missing_slot",) if design.unmentioned == "placeholder" else ())
    pairs, errors = FORMATS[design.output_format].parse(stripped, design, c)
    repaired, seen = False, set()
    for key, raw_values in pairs:
        slot, key_fixed = c.decode_key(key)
        if slot is None:
            errors.append("check_error")
            continue
        repaired |= key_fixed
        values, value_errors, value_fixed = _decode_values(raw_values, c)
        errors.extend(value_errors)
        repaired |= value_fixed
        answer[slot] = (*answer[slot], *values) if (c.multi and slot in seen) else values
        seen.add(slot)
    if design.unmentioned == "placeholder" and len(seen) < len(c.slots):
        errors.append("missing_slot")
    return Parsed(answer, tuple(errors), repaired)


def _decode_values(raw: str, c: Codec) -> tuple[tuple[str, ...], list[str], bool]:
    """Written values -> (values, error kinds, repaired)."""
    if c.multi:
        items = [v.strip() for v in raw.split(",") if v.strip()]
        if [i.lower() for i in items] == [c.unmentioned.lower()]:
            return (), [], False
        return tuple(items), [], False
    label, fixed = c.decode_label(raw)
    if label is None:
        return (c.unmentioned,), ["label_error"], False
    return (label,), [], fixed
