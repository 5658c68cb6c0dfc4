"""Parsers: generated text -> an answer on every slot, the error kinds met and whether a repair was needed.

Also the codec (how a task writes slots and labels under a design), which :mod:`sde_search.render` writes
with; ``render.FORMATS`` pairs each renderer with its parser here. One leniency policy for every format
(README "How generations are parsed"): a format's parser only cuts the text into pieces in its own syntax
(``natural``: lines, then at the joiner before a unit; ``lines``: lines; ``json``: an object per line),
rescuing a unit whose syntax is broken (``split_error`` and a repair). A value holding a separator is written
as a JSON string (:func:`quoted`); no format cuts inside one, and the values of a unit are split once, in
:func:`_read_values`, so a JSON list reads like the ``lines`` unit it would be. Keys, labels (anything not written
exactly that still reads is a repair), ``trailing_text``, ``repeated_slot`` (single-valued: the first
occurrence is kept; multi-valued: new values are added) and ``missing_slot`` are judged once, in
:func:`parse`, so the same defect reads alike in every format.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from sde_search.config import Task
from sde_search.design import Design

NOTHING = "none"  # the whole target when ``unmentioned=omit`` leaves no unit
COT, REVERSE = " => ", " <= "
ERROR_KINDS = ("empty", "split_error", "check_error", "label_error", "trailing_text", "repeated_slot",
               "missing_slot")
_STRAY = "\"'`*.,;:!?"  # punctuation around a key or label that is read past (a repair)
_SENTENCE_END = re.compile(r"[.!?]\s+")
_UNIT_START = re.compile(r"[^,;:=<>]{1,60}:")
_QUOTED = re.compile(r'"(?:[^"\\\n]|\\.)*"')  # one JSON string on one line
_VALUE_SEPARATORS = re.compile(r'[,;"\n\r]|=>|<=')
_REASON_SEPARATORS = re.compile(r'["\n\r]')


def needs_quotes(text: str, *, reason: bool = False) -> bool:
    """Whether a written value (or a rationale, ``reason=True``) must be a JSON string to be read back.

    A value holding a comma (the value joiner), a semicolon (the unit joiner of multi-valued ``natural``),
    ``=>`` or ``<=`` (the reasoning markers), a double quote or a line break would be cut by the parser. A
    rationale may hold commas and the markers (the parser reads the values past them), but a double quote
    could pair with a quoted value's and a line break ends the unit.
    """
    return bool((_REASON_SEPARATORS if reason else _VALUE_SEPARATORS).search(text))


def quoted(text: str, *, reason: bool = False) -> str:
    """The text as written in a ``natural`` / ``lines`` unit: a JSON string if it needs quotes, else as is."""
    return json.dumps(text, ensure_ascii=False) if needs_quotes(text, reason=reason) else text


def _unquoted(text: str) -> tuple[str, bool] | None:
    """A whole JSON string (surrounding spaces allowed) -> (its value, it needed the quotes), else None."""
    stripped = text.strip()
    if not _QUOTED.fullmatch(stripped):
        return None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:  # an escape JSON does not know (``\q``): not a string of ours
        return None
    return value, needs_quotes(value)


def _masked(text: str) -> str:
    """The text with the inside of every JSON string blanked (same length), so separators there are not seen."""
    if '"' not in text:
        return text
    return _QUOTED.sub(lambda m: '"' + "\0" * (len(m[0]) - 2) + '"', text)


@dataclass(frozen=True)
class Parsed:
    """A parsed generation.

    Attributes:
        answer: Slot -> values on every slot (empty slots filled), scored even when errors occurred.
        errors: Error kinds (see ``ERROR_KINDS``), one per occurrence in reading order; any error makes the
            sample a format error.
        repaired: Whether something was read leniently: a key or label not written exactly, or a unit
            rescued from broken syntax.
    """

    answer: dict[str, tuple[str, ...]]
    errors: tuple[str, ...] = ()
    repaired: bool = False

    @property
    def status(self) -> Literal["ok", "repaired", "failed"]:
        """``failed`` with any error, else ``repaired`` after a lenient read, else ``ok``."""
        return "failed" if self.errors else ("repaired" if self.repaired else "ok")


def _bare(text: str) -> str:
    """Lowercased, without surrounding whitespace and stray punctuation."""
    return text.strip().strip(_STRAY).strip().lower()


def _number(text: str) -> str | None:
    """A whole number however written (``+1``, ``1.0``, ``-0``) in its plain form, else None."""
    m = re.fullmatch(r"([+-]?)(\d+)(?:\.0*)?", text)
    return None if m is None else str(-int(m[2]) if m[1] == "-" else int(m[2]))


def _words(text: str) -> set[str]:
    """Lowercased words of a key or slot name, a plural ``s`` dropped."""
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in re.findall(r"[a-z0-9]+", text.lower())}


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

    @property
    def empty(self) -> tuple[str, ...]:
        """The value of a slot with nothing in it."""
        return () if self.multi else (self.unmentioned,)

    @cached_property
    def keys(self) -> tuple[str, ...]:
        """Every way a key is written or read without keyword matching: slot codes, then slot names."""
        return tuple(dict.fromkeys([*(self.slot_key(s) for s in self.slots), *self.slots]))

    @cached_property
    def _key_forms(self) -> dict[str, str]:
        return {_bare(form): s for s in self.slots for form in (self.slot_key(s), s)}

    @cached_property
    def _label_forms(self) -> dict[str, str]:
        forms = {_bare(form): v for v in self.labels for form in (self.value_code(v), v)}
        return {**self.synonyms, **forms}

    def read_key(self, written: str) -> tuple[str | None, bool]:
        """Written key -> (slot or None, repaired).

        Exact: the slot's code. Repairs: the code or slot name in another case or with stray punctuation,
        a number variant (``+1``, ``1.0``), or a slot keyword: the one slot whose name words contain the
        key's words or are contained in them (most shared words wins; a tie reads nothing).
        """
        key = written.strip()
        exact = [s for s in self.slots if self.slot_key(s) == key]
        if exact:
            return exact[0], False
        bare = _bare(key)
        slot = self._key_forms.get(bare) or self._key_forms.get(_number(bare) or "")
        if slot is not None:
            return slot, True
        words = _words(bare)
        shared = {s: len(_words(s) & words) for s in self.slots
                  if words and (_words(s) <= words or words <= _words(s))}
        best = [s for s, n in shared.items() if n == max(shared.values())]
        return (best[0], True) if len(best) == 1 else (None, False)

    def read_label(self, written: str) -> tuple[str | None, bool, bool]:
        """Written single-valued label -> (label or None, repaired, trailing text after it).

        Exact: the label's code. Repairs: the code or label name in another case or with stray
        punctuation, a number variant, a synonym (``labels.synonyms``). A label followed by a sentence end
        and more text (``positive. Hope this helps!``) is read, with the rest flagged as trailing text.
        """
        text = written.strip()
        label, fixed = self._label(text)
        if label is not None:
            return label, fixed, False
        end = _SENTENCE_END.search(text)
        if end:
            label, fixed = self._label(text[:end.start()])
            if label is not None:
                return label, fixed, True
        return None, False, False

    def _label(self, text: str) -> tuple[str | None, bool]:
        exact = [v for v in self.labels if self.value_code(v) == text]
        if exact:
            return exact[0], False
        bare = _bare(text)
        label = self._label_forms.get(bare) or self._label_forms.get(_number(bare) or "")
        return label, label is not None


def codec(task: Task, design: Design, *, ood: bool = False, slots: Sequence[str] | None = None) -> Codec:
    """Builds the codec for a task's ID or OOD slots under a design (or for one record's own ``slots``)."""
    labels_cfg = task.config.labels
    slots = tuple(slots) if slots else (task.ood_slots if ood else task.slots)
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


def natural_joiner(c: Codec) -> str:
    """What joins two units of the ``natural`` format."""
    return "; " if c.multi else ", "


def json_fields(c: Codec) -> tuple[str, str]:
    """The JSON fields of a unit: the slot's and the value's (a list's for multi-valued tasks)."""
    return c.slot_noun, (c.value_plural if c.multi else c.value_noun)


# ---------------------------------------------------------------- pieces


@dataclass(frozen=True)
class Piece:
    """One unit as a format's parser cut it out.

    Attributes:
        key: The written key; None when nothing readable was found (the piece is noise).
        values: The written values (rationale removed), or the noise's text.
        broken: The unit breaks the format's syntax and was read by a rescue.
        trailing: Text followed the unit on its line (JSON: after the closing brace).
        fixed: Stray punctuation followed the unit (JSON: after the closing brace).
    """

    key: str | None
    values: str
    broken: bool = False
    trailing: bool = False
    fixed: bool = False


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _reasoning_values(rest: str, reasoning: str) -> tuple[str, bool]:
    """A unit's text after the key -> (values text, reasoning separator found); markers inside quotes are text."""
    if reasoning == "cot":
        at = _masked(rest).rfind(COT.strip())
        return (rest[at + len(COT.strip()):], True) if at >= 0 else (rest, False)
    if reasoning == "reverse_cot":
        at = _masked(rest).find(REVERSE.strip())
        return (rest[:at], True) if at >= 0 else (rest, False)
    return rest, True


def _known_key(text: str, c: Codec) -> tuple[str, str] | None:
    """``key: rest`` for a known key (as written, rest), so slot names with a colon (``Conflict:Attack``) survive."""
    known = [k for k in c.keys if text.lower().startswith(k.lower() + ":")]
    if not known:
        return None
    n = len(max(known, key=len))
    return text[:n], text[n + 1:]


def _rescue(text: str, design: Design, c: Codec) -> tuple[str, str] | None:
    """A unit without its colon -> (key, rest), else None.

    A known key, then a space when the rest reads as a label (single-valued tasks only, so chatter such
    as ``Food was great.`` stays unread), else ``=>``, ``->``, ``-``, ``=``, ``>`` or ``|``.
    """
    keys = "|".join(re.escape(k) for k in sorted(c.keys, key=len, reverse=True))
    for spaced in (True, False):
        sep = r"\s+" if spaced else r"\s*(?:=>|->|[-=>|])\s*"
        m = re.match(rf"({keys}){sep}(\S.*)", text, re.IGNORECASE | re.DOTALL)
        if m is None or (spaced and (c.multi or c.read_label(_reasoning_values(m[2], design.reasoning)[0])[0] is None)):
            continue
        return m[1], m[2]
    return None


def _read_unit(text: str, design: Design, c: Codec) -> Piece:
    """``key: values`` (with the design's rationale) -> a piece; rescued without the colon, else noise.

    A known key with its colon is read first, then the rescue, then any ``key:`` (an unknown key).
    """
    split, broken = _known_key(text, c), False
    if split is None:
        split, broken = _rescue(text, design, c), True
    if split is None:
        key, colon, rest = text.partition(":")
        split, broken = ((key, rest) if colon else None), False
    if split is None:
        return Piece(None, text)
    values, found = _reasoning_values(split[1], design.reasoning)
    return Piece(split[0], values, broken or not found)


def parse_natural(text: str, design: Design, c: Codec) -> list[Piece]:
    """Units on a line, split at the joiner only where a unit starts, so commas inside rationales survive.

    The closing period is optional; a line break also ends a unit (the lines after the answer are chatter
    unless they hold units). A joiner inside a quoted value is text.
    """
    joiner = re.compile(rf"{re.escape(natural_joiner(c).strip())}\s+")
    pieces: list[Piece] = []
    for line in _lines(text):
        line = line.removesuffix(".")
        cuts = [(m.start(), m.end()) for m in joiner.finditer(_masked(line))]
        bounds = [0, *(i for cut in cuts for i in cut), len(line)]
        parts = [line[a:b] for a, b in itertools.pairwise(bounds)]  # unit, joiner, unit, ...
        units = [parts[0]]
        for sep, part in zip(parts[1::2], parts[2::2], strict=True):
            if _UNIT_START.match(part) or _rescue(part, design, c):
                units.append(part)
            else:
                units[-1] += sep + part
        pieces.extend(_read_unit(u, design, c) for u in units)
    return pieces


def parse_lines(text: str, design: Design, c: Codec) -> list[Piece]:
    """One unit per non-blank line."""
    return [_read_unit(line, design, c) for line in _lines(text)]


_JSON_FIELD = r'"{}"\s*:\s*(\[[^\]]*\]|"[^"]*"|[-+]?\d+(?:\.\d+)?)'
_DECODER = json.JSONDecoder()


def _field_value(raw: str) -> Any:
    """A field matched by :data:`_JSON_FIELD`; a list broken inside (``["a", "b]``) keeps its items' text."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if raw.startswith("["):
            return [v.strip().replace('"', "") for v in raw.strip("[]").split(",") if v.strip()]
        return raw.replace('"', "")


def _json_text(value: Any, *, quote: bool = True) -> str:
    """A JSON field as the text a ``lines`` unit would hold; a key (``quote=False``) as it is.

    List items are joined by ``, ``, and a string holding a separator is quoted as it would be there, so
    ``["Portsmouth , UK"]`` stays one value when :func:`_read_values` splits the text.
    """
    if isinstance(value, list):
        return ", ".join(_json_text(v) for v in value)
    if isinstance(value, str):
        return quoted(value) if quote else value
    return "" if value is None else json.dumps(value)


def parse_json(text: str, design: Design, c: Codec) -> list[Piece]:
    """One JSON object per line, read with ``raw_decode`` (never eval); a broken line is rescued by a regex."""
    slot_field, value_field = json_fields(c)
    pieces = []
    for line in _lines(text):
        try:
            obj, end = _DECODER.raw_decode(line)
        except json.JSONDecodeError:
            obj, end = None, 0
        if isinstance(obj, dict) and slot_field in obj and value_field in obj:
            after = line[end:].strip()
            trailing = bool(after.strip(_STRAY).strip())
            no_rationale = design.reasoning != "none" and "rationale" not in obj
            pieces.append(Piece(_json_text(obj[slot_field], quote=False), _json_text(obj[value_field]),
                                no_rationale, trailing, bool(after) and not trailing))
            continue
        found = [re.search(_JSON_FIELD.format(re.escape(f)), line) for f in (slot_field, value_field)]
        if found[0] and found[1]:
            key, value = (_json_text(_field_value(m.group(1)), quote=i == 1) for i, m in enumerate(found) if m)
            pieces.append(Piece(key, value, broken=True))
        else:
            pieces.append(Piece(None, line))
    return pieces


Parser = Callable[[str, Design, Codec], list[Piece]]
PARSERS: dict[str, Parser] = {"natural": parse_natural, "lines": parse_lines, "json": parse_json}


# ---------------------------------------------------------------- the policy


def _items(raw: str) -> list[str]:
    """Written values cut at commas outside quotes, stripped, blanks dropped."""
    if '"' not in raw:
        return [item for v in raw.split(",") if (item := v.strip())]
    bounds = [0, *(i for m in re.finditer(",", _masked(raw)) for i in (m.start(), m.end())), len(raw)]
    return [item for a, b in zip(bounds[::2], bounds[1::2], strict=True) if (item := raw[a:b].strip())]


def _read_values(raw: str, c: Codec) -> tuple[tuple[str, ...], list[str], bool, bool]:
    """Written values -> (values, error kinds, repaired, trailing text).

    A value written as a JSON string is read as its content; quotes around a value that needs none are a repair.
    """
    if c.multi:
        items = _items(raw)
        if len(items) == 1 and _bare(items[0]) == c.unmentioned.lower():
            return (), [], items[0] != c.unmentioned, False
        values, repaired = [], False
        for item in items:
            string = _unquoted(item)
            values.append(item if string is None else string[0])
            repaired |= string is not None and not string[1]
        return tuple(values), [], repaired, False
    string = _unquoted(raw)
    label, fixed, trailing = c.read_label(raw if string is None else string[0])
    if label is None:
        return (c.unmentioned,), ["label_error"], False, False
    return (label,), [], fixed or (string is not None and not string[1]), trailing


def parse(text: str, design: Design, task: Task, *, ood: bool = False, slots: Sequence[str] | None = None) -> Parsed:
    """Parses a generation back into an answer on every slot (empty slots filled), one policy for all formats.

    Failed parses still return what could be read (the paper scores them). Error kinds, in reading order:
    ``split_error`` (a unit breaking the format's syntax, rescued or not), ``check_error`` (unknown key),
    ``label_error`` (unknown label, read as unmentioned), ``trailing_text``, ``repeated_slot``, then
    ``missing_slot`` (under ``placeholder`` every slot is owed); ``empty`` alone for a blank generation.
    A bare ``none`` (any case, optional period) is every slot empty. ``slots``: the record's own slot list
    (``Record.slots``), when it has one; a unit for another slot of the split is a ``check_error`` whose value
    is still kept in the answer (under that slot), so that scoring can count it as a wrong answer.
    """
    c = codec(task, design, ood=ood, slots=slots)
    answer = dict.fromkeys(c.slots, c.empty)
    stripped = text.strip()
    if not stripped:
        return Parsed(answer, ("empty",))
    first, _, rest = stripped.partition("\n")
    if _bare(first) == NOTHING:  # fine under omit; under placeholder every slot was owed
        errors: list[str] = ["trailing_text"] if rest.strip() else []
        return Parsed(answer, tuple(errors + (["missing_slot"] if design.unmentioned == "placeholder" else [])))
    pieces = PARSERS[design.output_format](stripped, design, c)
    last = max((i for i, p in enumerate(pieces) if p.key is not None), default=len(pieces))
    errors = []
    repaired, seen = False, set()
    for i, p in enumerate(pieces):
        if p.key is None:
            errors.append("trailing_text" if i > last else "split_error")
            continue
        errors.extend(["split_error"] if p.broken else [])
        slot, key_fixed = c.read_key(p.key)
        repaired |= p.broken or p.fixed or key_fixed
        if slot is None:
            errors.append("check_error")
            pool = codec(task, design, ood=ood) if slots else None  # the split's slots, not all asked for
            extra = pool.read_key(p.key)[0] if pool else None
            if pool and extra is not None and extra not in answer:  # kept: scoring charges a rating nobody asked for
                answer[extra] = _read_values(p.values, pool)[0]
            continue
        values, kinds, fixed, trailing = _read_values(p.values, c)
        repaired |= fixed
        errors.extend(kinds + (["trailing_text"] if trailing or p.trailing else []))
        if slot in seen:
            errors.append("repeated_slot")
            if c.multi:
                answer[slot] = (*answer[slot], *(v for v in values if v not in answer[slot]))
        else:
            answer[slot] = values
        seen.add(slot)
    if design.unmentioned == "placeholder" and len(seen) < len(c.slots):
        errors.append("missing_slot")
    return Parsed(answer, tuple(errors), repaired)
