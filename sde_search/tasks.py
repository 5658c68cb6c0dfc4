"""Task types and records: what a task's data looks like and how it is scored.

Three built-in types follow the paper's task families: ``aspect_sentiment``
(multi-aspect sentiment, MASA), ``entities`` (nested NER) and ``events`` (event
detection). Each turns a JSON record into a :class:`Record` whose ``answer`` maps
every *slot* (aspect / entity type / event type) to its values, and scores
parsed predictions with :mod:`sde_search.metrics`. ``@task_type`` is the only
registry; a user module listed under ``plugins:`` can register more.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import csv
import errno
import importlib
import io
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from sde_search import metrics

Answer = Mapping[str, tuple[str, ...]]
"""Slot -> values. MASA: exactly one label per slot; entities/events: names or triggers (maybe none)."""


@dataclass(frozen=True)
class Record:
    """One labelled example, independent of any design.

    Attributes:
        id: Unique id within its split.
        text: The input text.
        answer: Slot -> values, for the slots the record labels.
        rationales: Slot -> one-line justification (used by CoT designs); may be empty.
        slots: The slots this record's instruction lists and is scored on, in order (JSON key ``slots``);
            None (the default) means the split's slot list (``labels.slots``, or ``labels.ood_slots`` on OOD
            splits). A varying list per record is what makes a model read the instruction.
    """

    id: str
    text: str
    answer: Answer
    rationales: Mapping[str, str] = field(default_factory=dict)
    slots: tuple[str, ...] | None = None


class TaskType:
    """Behaviour shared by a family of tasks; subclasses set the class attributes.

    Attributes:
        name: The ``type:`` value in the task YAML.
        multi_valued: Whether a slot holds several values (entities, events) or one label (MASA).
        slot_noun: What a slot is called in instructions ("aspect", "type").
        value_noun: What a value is called ("label", "entity", "trigger").
        value_plural: Its plural, used as the JSON field of multi-valued slots.
        score_key: The metric the search maximises.
        placeholder: The default word written for an empty slot under ``unmentioned=placeholder``.
        default_instruction: Instruction template; ``{slots}``, ``{labels}``, ``{format}`` are filled in.
    """

    name: ClassVar[str]
    multi_valued: ClassVar[bool]
    slot_noun: ClassVar[str]
    value_noun: ClassVar[str]
    value_plural: ClassVar[str] = ""
    score_key: ClassVar[str]
    placeholder: ClassVar[str]
    default_instruction: ClassVar[str]

    def from_json(self, obj: Mapping[str, Any]) -> Record:
        """Builds a record from one JSON object; raises KeyError/TypeError/ValueError on a bad shape."""
        raise NotImplementedError

    def empty(self, unmentioned: str) -> tuple[str, ...]:
        """The value of a slot with nothing in it: ``()`` for multi-valued types, else ``(unmentioned,)``."""
        return () if self.multi_valued else (unmentioned,)

    def gold(self, record: Record, slots: Sequence[str], unmentioned: str) -> dict[str, tuple[str, ...]]:
        """The record's answer restricted to ``slots``, empty slots filled (MASA: with ``unmentioned``)."""
        empty = self.empty(unmentioned)
        return {s: tuple(record.answer.get(s, empty)) or empty for s in slots}

    def is_empty(self, values: Sequence[str], unmentioned: str) -> bool:
        """Whether a slot's values mean "not mentioned"."""
        return not values or (not self.multi_valued and tuple(values) == (unmentioned,))

    def label_problems(self, record: Record, slots: Sequence[str], values: Sequence[str],
                       unmentioned: str) -> list[str]:
        """Labels of ``record`` outside the schema, as short messages (empty when fine)."""
        return [f"slot {_short(s)} is not in labels.slots/ood_slots (allowed: {clip(', '.join(slots))})"
                for s in record.answer if s not in slots]

    def score(self, golds: Sequence[Answer], preds: Sequence[Answer], *, slots: Sequence[str],
              values: Sequence[str], unmentioned: str, weights: Sequence[Sequence[float]] | None = None,
              ) -> dict[str, float]:
        """Scores predictions against golds; the dict holds ``score_key`` and ``accuracy``.

        ``accuracy`` is what the reads-the-input check compares with the majority answer: per slot for MASA,
        whole records (exact match) for span tasks. ``weights`` are ``metrics.kappa_weights`` of the task file
        (aspect sentiment only).
        """
        raise NotImplementedError


TASK_TYPES: dict[str, TaskType] = {}


def task_type(cls: type[TaskType]) -> type[TaskType]:
    """Class decorator registering a task type under its ``name`` (the only registry)."""
    if cls.name in TASK_TYPES:
        raise ValueError(f"task type {cls.name!r} is already registered")
    TASK_TYPES[cls.name] = cls()
    return cls


@task_type
class AspectSentiment(TaskType):
    """Multi-aspect sentiment analysis: one polarity label per aspect."""

    name = "aspect_sentiment"
    multi_valued = False
    slot_noun = "aspect"
    value_noun = "label"
    score_key = "kappa"
    placeholder = "unmentioned"
    default_instruction = "Rate the sentiment of each aspect. Aspects: {slots}. Labels: {labels}. {format}"

    def from_json(self, obj: Mapping[str, Any]) -> Record:  # noqa: D102
        labels = obj["labels"]
        if not isinstance(labels, dict):
            raise TypeError("'labels' must be an object {aspect: label}")
        answer = {str(k): (str(v),) for k, v in labels.items()}
        return Record(_record_id(obj), _text(obj), answer, _rationales(obj))

    def label_problems(self, record: Record, slots: Sequence[str], values: Sequence[str],  # noqa: D102
                       unmentioned: str) -> list[str]:
        allowed = [*values, unmentioned]
        bad = [f"aspect {_short(s)}: label {_short(v[0])} is not one of {clip(str(allowed))}"
               for s, v in record.answer.items() if s in slots and v[0] not in allowed]
        return bad + [f"aspect {_short(s)} is not in labels.slots/ood_slots (allowed: {clip(', '.join(slots))})"
                      for s in record.answer if s not in slots]

    def score(self, golds: Sequence[Answer], preds: Sequence[Answer], *, slots: Sequence[str],  # noqa: D102
              values: Sequence[str], unmentioned: str, weights: Sequence[Sequence[float]] | None = None,
              ) -> dict[str, float]:
        # Golds come from Task.gold and hold exactly the slots their record is scored on: the split's list, or
        # the record's own list when it has one. Then each record is scored on its own keys, plus every slot the
        # answer rates although the record did not ask for it (gold: unmentioned), so that rating every aspect
        # the text names, asked or not, costs what it should.
        own = None
        if any(set(g) != set(slots) for g in golds):
            own = [(*g, *(s for s, v in p.items() if s not in g and tuple(v) != (unmentioned,)))
                   for g, p in zip(golds, preds, strict=True)]
        return metrics.aspect_scores(golds, preds, slots=slots, labels=values, unmentioned=unmentioned,
                                     weights=weights, sample_slots=own)


class _Spans(TaskType):
    """Shared shape of span tasks: a list of {type, text, start, end} objects per record."""

    list_key: ClassVar[str]
    text_key: ClassVar[str]
    containment: ClassVar[bool]
    multi_valued = True
    slot_noun = "type"
    score_key = "f1_soft"
    placeholder = "none"

    def from_json(self, obj: Mapping[str, Any]) -> Record:  # noqa: D102
        text = _text(obj)
        answer: dict[str, list[str]] = {}
        items = obj[self.list_key]
        shape = f"{{type, {self.text_key}, start, end}}"
        if not isinstance(items, list):
            raise TypeError(f"'{self.list_key}' must be a list of objects {shape}, got {type(items).__name__}")
        for n, item in enumerate(items):
            if not isinstance(item, dict) or "type" not in item or self.text_key not in item:
                raise ValueError(f"{self.list_key}[{n}]: expected an object {shape} (start, end optional), "
                                 f"got {item!r}")
            span = str(item[self.text_key])
            _check_span(text, span, item.get("start"), item.get("end"), self.list_key, n)
            answer.setdefault(str(item["type"]), []).append(span)
        answer_t = {k: tuple(v) for k, v in answer.items()}
        return Record(_record_id(obj), text, answer_t, _rationales(obj))

    def score(self, golds: Sequence[Answer], preds: Sequence[Answer], *, slots: Sequence[str],  # noqa: D102
              values: Sequence[str], unmentioned: str, weights: Sequence[Sequence[float]] | None = None,
              ) -> dict[str, float]:
        return {**metrics.span_scores(golds, preds, containment=self.containment),
                "accuracy": metrics.exact_match(golds, preds)}


def _record_id(obj: Mapping[str, Any]) -> str:
    """The record's ``id``: a non-empty string or a whole number (null would read as the id 'None')."""
    rid = obj["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
        shown = json.dumps(rid, default=str)  # as the file wrote it: null, true, [...]
        raise TypeError(f"'id' must be a non-empty string or a whole number, got {shown[:200]} "
                        "(leave the key out to number the records by row)")
    return str(rid)


def _check_span(text: str, span: str, start: Any, end: Any, key: str, n: int) -> None:
    """A span must hold text, and its offsets (both or neither) must locate it in the text."""
    where = f"{key}[{n}]"
    if not span.strip():
        raise ValueError(f"{where}: an empty span; every entity or trigger needs some text")
    if (start is None) != (end is None):
        raise ValueError(f"{where}: give both start and end (character offsets) or neither")
    if start is None:
        return
    if any(isinstance(i, bool) or not isinstance(i, int) for i in (start, end)):
        raise TypeError(f"{where}: start and end must be whole numbers (character offsets), got "
                        f"{_short(start)} and {_short(end)}")
    if not 0 <= start < end <= len(text):
        raise ValueError(f"{where}: offsets {start}:{end} lie outside the text (allowed: 0 <= start < end <= "
                         f"{len(text)}, the text's length)")
    if text[start:end] != span:
        raise ValueError(f"{key}: text[{start}:{end}] is {_short(text[start:end])}, not {_short(span)}")


def _short(value: Any) -> str:
    """A value for a message, cut to about 200 characters."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _text(obj: Mapping[str, Any]) -> str:
    """The record's ``text``, which must be a string."""
    text = obj["text"]
    if not isinstance(text, str):
        raise TypeError(f"'text' must be a string, got {type(text).__name__}")
    return text


def _rationales(obj: Mapping[str, Any]) -> dict[str, str]:
    """The record's optional ``rationales``, an object {slot: one-line justification}."""
    rationales = obj.get("rationales") or {}
    if not isinstance(rationales, dict):
        raise TypeError(f"'rationales' must be an object {{slot: text}}, got {type(rationales).__name__}")
    return dict(rationales)


@task_type
class Entities(_Spans):
    """Nested named-entity recognition: entity names per type (spans may nest or overlap)."""

    name = "entities"
    list_key, text_key, containment = "entities", "span", True
    value_noun, value_plural = "entity", "entities"
    default_instruction = "List the named entities by type. Types: {slots}. {format}"


@task_type
class Events(_Spans):
    """Event detection: trigger words per event type."""

    name = "events"
    list_key, text_key, containment = "events", "trigger", False
    value_noun, value_plural = "trigger", "triggers"
    default_instruction = "List the event trigger words by type. Types: {slots}. {format}"


def load_plugins(modules: Sequence[str]) -> None:
    """Imports the user modules named under ``plugins:`` (the only way user code runs).

    Raises:
        ImportError: Re-raised with the module name when a plugin is missing or fails on import.
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as exc:  # a plugin may raise anything on import, sys.exit() included
            raise ImportError(f"plugin {name!r} could not be imported: {type(exc).__name__}: {exc}") from exc


MAX_JSON_DEPTH = 100
"""Deepest nesting of arrays/objects in a record (records need about 4; deeper is a broken or hostile file)."""


class NotARegularFile(OSError):
    """A path that is neither a regular file nor a folder (a FIFO, a device, a socket): reading it could hang."""

    def __init__(self, path: str | Path, what: str):
        """Names the kind of file found (e.g. "a FIFO (named pipe)")."""
        super().__init__(f"{path} is {what}, not a regular file")
        self.filename, self.what = str(path), what


_FILE_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFSOCK: "a socket"}


def read_file(path: str | Path) -> bytes:
    """The bytes of a regular file, opened so that a FIFO or device can neither hang nor flood the reader.

    Raises:
        OSError: FileNotFoundError, PermissionError, IsADirectoryError, ``errno.ELOOP`` (a symbolic link loop) or
            :class:`NotARegularFile` (a FIFO, device or socket).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)  # no writer: a FIFO opens at once
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise NotARegularFile(path, _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file"))
        return f.read()


def read_rows(source: str, *, columns: Mapping[str, str] | None = None, split: str = "train") -> list[dict[str, Any]]:
    """Reads raw rows from a JSONL or CSV file, or a ``hf:`` dataset id.

    JSONL and CSV are read with the standard library: ``datasets`` costs 1.6 s to import,
    which would break the ``--check`` latency goal; ``hf:`` ids go through ``datasets``.

    Args:
        source: A file path (``.jsonl``/``.json`` or ``.csv``) or ``hf:<dataset id>[:<split>]``.
        columns: Optional renaming, record key -> source column (e.g. ``{"text": "sentence"}``).
        split: The split for ``hf:`` ids without one.

    Returns:
        Rows as dicts with the record keys.

    Raises:
        OSError: The file cannot be read (see :func:`read_file`).
        ValueError: Not UTF-8, not JSON/CSV, JSON nested deeper than :data:`MAX_JSON_DEPTH`, NaN/Infinity.
    """
    if source.startswith("hf:"):
        rows = _read_hf(source[3:], split)
    elif source.endswith(".csv"):
        rows = _read_csv(_read_utf8(source))
    else:  # split at "\n" only: JSON strings may hold other line breaks (U+2028)
        lines = _read_utf8(source).split("\n")
        rows = [_json_line(line, source, i) for i, line in enumerate(lines, 1) if line.strip()]
    if columns:
        rows = [{**r, **{key: r[col] for key, col in columns.items() if col in r}} for r in rows]
    return rows


def _read_utf8(source: str) -> str:
    """A whole file as UTF-8 text (a byte-order mark is skipped); a decoding error locates the byte in the file."""
    return read_file(source).decode("utf-8-sig")


def _json_line(line: str, source: str, number: int) -> dict[str, Any]:
    obj = _json_value(line, f"line {number}", "a .jsonl file holds one JSON object per line")
    if not isinstance(obj, dict):
        raise ValueError(f"line {number}: expected a JSON object {{\"id\": ..., \"text\": ...}}, "
                         f"got {type(obj).__name__}")
    return obj


def _json_value(text: str, where: str, hint: str) -> Any:
    """Strict JSON (no NaN or Infinity, finite numbers, nesting at most :data:`MAX_JSON_DEPTH`) or a ValueError."""
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg}); {hint}") from exc
    except RecursionError as exc:
        raise ValueError(f"{where}: JSON nested too deeply (allowed: at most {MAX_JSON_DEPTH} levels of "
                         "arrays/objects)") from exc
    except ValueError as exc:  # NaN/Infinity, 1e999, an integer of more than 4300 digits
        raise ValueError(f"{where}: {clip(_first_line(exc))}") from exc
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _too_deep(value, MAX_JSON_DEPTH):
        raise ValueError(f"{where}: JSON nested too deeply (allowed: at most {MAX_JSON_DEPTH} levels of "
                         "arrays/objects)")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON value (JSON has no NaN or Infinity); write null or a quoted string")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {clip(text, 40)} is too large for a float; write it as a quoted string")
    return value


def _too_deep(value: Any, limit: int) -> bool:
    """Whether arrays/objects nest deeper than ``limit`` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        if children and depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _read_csv(text: str) -> list[dict[str, Any]]:
    """Rows of a CSV text with a header line; a row with more or fewer cells than the header is an error."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[dict[str, Any]] = []
    start = 1  # the line where the row being read begins (a quoted cell may span lines)
    try:
        header = reader.fieldnames or []
        start = reader.line_num + 1
        for row in reader:
            extra, short = row.pop(None, []), [k for k, v in row.items() if v is None]
            if extra or short:
                raise ValueError(f"line {reader.line_num}: {len(header) + len(extra) - len(short)} cells where the "
                                 f"header has {len(header)} columns ({', '.join(header)}); quote cells that hold "
                                 "commas")
            rows.append(_decode_csv_cells(row, reader.line_num))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ValueError(_csv_problem(exc, start)) from exc
    return rows


def _csv_problem(exc: csv.Error, line: int) -> str:
    """Why the CSV reader stopped, from the line where the row began."""
    if "field larger than field limit" in str(exc):
        return (f"line {line}: a cell longer than {csv.field_size_limit():,} characters -- most often a quote that "
                "is never closed, so the cell runs on over the following lines (allowed: shorter cells, every "
                "opening \" closed)")
    return f"line {line}: not valid CSV ({clip(_first_line(exc))})"


def _decode_csv_cells(row: dict[str, str], line: int) -> dict[str, Any]:
    """CSV cells holding JSON (labels, entities, events) are decoded; others stay strings."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value[:1] not in ("[", "{"):
            out[key] = value
            continue
        out[key] = _json_value(value, f"line {line}, column {clip(key, 60)!r}",
                               "cells starting with [ or { must hold JSON")
    return out


def _read_hf(dataset_id: str, split: str) -> list[dict[str, Any]]:
    import datasets  # heavy (1.6 s): only for hub/local dataset ids

    name, _, named_split = dataset_id.partition(":")
    ds = datasets.load_dataset(name, split=named_split or split)
    return [dict(row) for row in ds]


def records_from_rows(rows: Sequence[Mapping[str, Any]], kind: TaskType,
                      on_error: Callable[[int, str], None]) -> list[Record]:
    """Converts raw rows to records, reporting each bad row through ``on_error(row_number, message)``.

    Raises:
        PluginError: When a plugin's ``from_json`` fails in a way that is not a bad row (any exception but
            KeyError/TypeError/ValueError/IndexError/AttributeError) or returns something that is not a Record.
    """
    records = []
    for i, row in enumerate(rows, 1):
        try:
            with plugin_code(kind, "from_json", i):
                record = kind.from_json({"id": f"row-{i}", **row})
        except KeyError as exc:
            on_error(i, f"missing key {exc}")
            continue
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            on_error(i, str(exc))
            continue
        if not isinstance(record, Record):
            raise PluginError(kind, "from_json", f"returned {type(record).__name__}, not a sde_search.tasks.Record",
                              row=i)
        if row.get("slots") is not None:
            try:
                record = replace(record, slots=record_slots(row["slots"]))
            except (TypeError, ValueError) as exc:
                on_error(i, str(exc))
                continue
        records.append(record)
    return records


def record_slots(value: Any) -> tuple[str, ...]:
    """A record's own slot list (JSON ``slots``): a non-empty list of distinct, non-blank strings."""
    if not isinstance(value, list) or not value or not all(isinstance(s, str) and s.strip() for s in value):
        raise TypeError(f"'slots' must be a non-empty list of slot names, got {clip(json.dumps(value, default=str))}")
    if len(set(value)) < len(value):
        raise ValueError(f"'slots' names a slot twice: {clip(json.dumps(value))}")
    return tuple(value)


def is_plugin(kind: TaskType) -> bool:
    """Whether a task type comes from a user module (``plugins:``) rather than this one."""
    return type(kind).__module__ != __name__


class PluginError(Exception):
    """A plugin's task type raised (or returned nonsense) where the tool called it.

    Attributes:
        module: The plugin module that defines the task type.
        row: The row being read when it happened (1-based), or None.
    """

    def __init__(self, kind: TaskType, function: str, what: str, *, row: int | None = None,
                 where: str = ""):
        """Builds the one-line message: the module, the task type, the function and what went wrong."""
        self.module, self.row = type(kind).__module__, row
        at = f" ({where})" if where else ""
        super().__init__(f"plugin {self.module!r} (task type {kind.name!r}): {type(kind).__name__}.{function} "
                         f"{what}{at} -- fix the plugin")


# Errors that mean "this row is malformed" when a task type's from_json raises them (its documented contract).
_ROW_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError)


@contextmanager
def plugin_code(kind: TaskType, function: str, row: int | None = None) -> Iterator[None]:
    """Turns anything a plugin's ``function`` raises (``sys.exit`` included) into a :class:`PluginError`.

    Built-in task types are left alone (their exceptions are this tool's bugs), and so are, in ``from_json``,
    the exceptions that mean a bad row.
    """
    try:
        yield
    except PluginError:
        raise
    except (Exception, SystemExit) as exc:
        if not is_plugin(kind) or (function == "from_json" and isinstance(exc, _ROW_ERRORS)):
            raise
        what = f"raised {type(exc).__name__}: {clip(_first_line(exc))}"
        raise PluginError(kind, function, what, row=row, where=_plugin_frame(kind, exc)) from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _plugin_frame(kind: TaskType, exc: BaseException) -> str:
    """``file.py, line N``: the last line of the plugin's own file that the exception passed through."""
    module = sys.modules.get(type(kind).__module__)
    plugin_file = getattr(module, "__file__", None)
    tb, found = exc.__traceback__, ""
    while tb is not None:
        if plugin_file and tb.tb_frame.f_code.co_filename == plugin_file:
            found = f"{Path(plugin_file).name}, line {tb.tb_lineno}"
        tb = tb.tb_next
    return found or (Path(plugin_file).name if plugin_file else "")


def clip(text: str, limit: int = 200, *, count: bool = True) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis (and, with ``count``, its full length).

    Messages never quote a whole user value.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)" if count else f"{text[:limit]}..."


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes rows as UTF-8 JSONL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
