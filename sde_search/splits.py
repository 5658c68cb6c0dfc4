"""Where each split's records come from: a file, a carve out of a file, or an ID split read with the OOD slots.

A task file's ``data.<split>`` is one of:

* a path (``.jsonl``, ``.json`` or ``.csv``) or ``hf:<dataset id>[:<split>]``. A relative path resolves
  against ``data.root`` (itself relative to the task file's folder); an absolute path and ``~`` are taken as is;
* ``none``, null or no key: no such split (``train`` and ``eval_id`` are required);
* a carve, ``{from: FILE or SPLIT, size: N or 0<f<1, seed: S, group: KEY, match: REGEX}``: ``size`` records
  (or that fraction of the file) drawn at random, by ``seed`` (default ``data.seed``), out of a file, or out of
  the file another split names. Whole groups are drawn: records sharing the ``group`` value (``id``, the default:
  each record alone; ``text``; or any field / CSV column of the rows), cut down to what ``match`` finds in it
  when given, and records with the same text, always go together, so no text lands on both sides. A split that
  names the same file as a plain path keeps the records that no carve took;
* ``{from: eval_id}`` for ``eval_ood`` (``{from: test_id}`` for ``test_ood``): the ID split's records read with
  ``labels.ood_slots``. Nothing is ever derived unless asked for this way.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sde_search import tasks
from sde_search.preflight import cut, did_you_mean, shown

SPLITS = ("train", "eval_id", "eval_ood", "test_id", "test_ood")
REQUIRED = ("train", "eval_id")
OFF = "none"
"""The value that turns a split off (``eval_ood: none``); YAML null and a missing key mean the same."""
OOD_TWIN = {"eval_ood": "eval_id", "test_ood": "test_id"}
"""OOD split -> the ID split whose records it may reuse, read with ``labels.ood_slots`` (``{from: eval_id}``)."""
SEED_LIMIT = 2**32
"""Seeds lie in [0, 2**32): numpy's RandomState (Optuna's samplers) refuses others, torch any beyond 64 bits."""
OWN_KEYS = ("id", "text")
"""Group keys that read the record itself rather than a field of its row."""


class SplitSpec(BaseModel):
    """A split given as a mapping: a carve out of a file, or an OOD split reusing its ID split's records."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    from_: str = Field(alias="from", min_length=1, description=(
        "A file (or hf:<id>) to carve from, a split whose file to carve from (e.g. train), or, with no size, "
        "eval_id for eval_ood / test_id for test_ood (the ID split's records read with labels.ood_slots)."))
    size: int | float | None = Field(None, description=(
        "Records to carve: a whole number >= 1, or a fraction 0 < size < 1 of the file's records."))
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT, description="Seed of the carve (default: data.seed).")
    group: str | None = Field(None, min_length=1, description=(
        "What keeps records together: id (default, each record alone), text, or a field / column of the rows "
        "(e.g. doc_id); records with the same text always go together."))
    match: str | None = Field(None, min_length=1, description=(
        "A regular expression: the group is what it finds in the group value (its first capture group, if any), "
        "e.g. group: id, match: 'doc\\d+'."))

    @model_validator(mode="after")
    def _consistent(self) -> SplitSpec:
        if self.size is None:
            extra = [k for k in ("seed", "group", "match") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} only go with size (a carve); add size: N (records) or a "
                                 "fraction 0 < size < 1, or drop them")
        elif isinstance(self.size, int) and self.size < 1:
            raise ValueError(f"size: {self.size} carves no records (allowed: a whole number >= 1, or a fraction "
                             "0 < size < 1)")
        elif isinstance(self.size, float) and not 0 < self.size < 1:
            raise ValueError(f"size: {self.size:g} is not a fraction 0 < size < 1 (a count of records is a whole "
                             "number >= 1, written without a dot)")
        if self.match is not None:
            try:
                re.compile(self.match)
            except re.error as exc:
                raise ValueError(f"match: {shown(self.match)} is not a regular expression ({exc}); quote it in "
                                 "single quotes in YAML (e.g. 'doc\\d+')") from exc
        return self


SplitValue = str | SplitSpec
"""What a task file's ``data.<split>`` holds (or None)."""


@dataclass(frozen=True)
class Source:
    """Where one split's records come from, resolved.

    Attributes:
        split: The split.
        kind: ``file`` (a whole file, less what carves took from it), ``carve`` or ``twin`` (an ID split's records).
        given: The file or split as the task file wrote it.
        location: The file path resolved against ``data.root``, or the ``hf:`` id ("" for a twin).
        size: Records to carve (a count or a fraction of the file); carves only.
        seed: The carve's seed.
        group: The carve's group key (None: the record id).
        match: The carve's regular expression on the group value, or None.
    """

    split: str
    kind: Literal["file", "carve", "twin"]
    given: str
    location: str = ""
    size: int | float | None = None
    seed: int = 0
    group: str | None = None
    match: str | None = None

    def group_text(self) -> str:
        """The group key in words, e.g. ``id``, or ``id ~ 'doc-[0-9]+'`` with a match."""
        return (self.group or "id") + (f" ~ '{self.match}'" if self.match else "")


def resolve(given: str, root: Path) -> str:
    """A split's path resolved: ``hf:`` ids and absolute paths as given, ``~`` expanded, others under ``root``."""
    if given.startswith("hf:"):
        return given
    return str(root / os.path.expanduser(given))  # joining an absolute path keeps it whole


def identity(location: str) -> str:
    """What tells two locations apart: the real path of a file (links and ``..`` resolved), an ``hf:`` id as is."""
    if location.startswith("hf:"):
        return location
    try:
        return os.path.realpath(location)
    except (OSError, ValueError):  # ValueError: a NUL byte in the name; reading it reports that
        return location


def plan(values: Mapping[str, SplitValue | None], root: Path, seed: int) -> tuple[dict[str, Source],
                                                                                   list[tuple[str, str]]]:
    """Each split's source, from the task file's ``data.<split>`` values.

    Args:
        values: Split -> its value (a path, ``none``, a :class:`SplitSpec`, or None).
        root: The resolved ``data.root``.
        seed: ``data.seed``, the seed of carves that name none.

    Returns:
        Split -> source, in :data:`SPLITS` order (splits turned off are left out), and the problems as
        ``(key path under data, message)`` pairs.
    """
    sources: dict[str, Source] = {}
    problems: list[tuple[str, str]] = []
    for split in SPLITS:
        value = values.get(split)
        if value is None or value == OFF:
            if split in REQUIRED and value == OFF:
                problems.append((split, f"{OFF!r} turns a split off, but {split} is required (allowed: a file, or "
                                        "{from: FILE, size: N} to carve it out of one)"))
            continue
        if isinstance(value, str):
            problem = _path_problem(value)
            if problem:
                problems.append((split, problem))
            else:
                sources[split] = Source(split, "file", value, resolve(value, root))
            continue
        source, problem = _spec_source(split, value, values, root, seed)
        if problem:
            problems.append((f"{split}.from", problem))
        elif source is not None:
            sources[split] = source
    return sources, problems


def _path_problem(value: str) -> str:
    """Why a path or ``hf:`` id names no data ("" when it may)."""
    if not value.strip():
        return f"an empty path (allowed: a file, hf:<dataset id>, {OFF} to turn the split off, or a carve)"
    if value.startswith("hf:") and not value[3:].partition(":")[0].strip():
        return (f"{shown(value)} names no dataset (allowed: hf:<dataset id> or hf:<dataset id>:<split>, "
                "e.g. hf:org/name:train)")
    return ""


def _spec_source(split: str, spec: SplitSpec, values: Mapping[str, SplitValue | None], root: Path,
                 seed: int) -> tuple[Source | None, str]:
    """The source of a split given as ``{from: ...}``, or the problem with it."""
    origin = spec.from_
    carve: dict[str, Any] = {"size": spec.size, "seed": seed if spec.seed is None else spec.seed, "group": spec.group,
             "match": spec.match}
    if origin in SPLITS and spec.size is None:
        if OOD_TWIN.get(split) != origin:
            return None, (f"{shown(origin)} without size would read another split's records; only an OOD split "
                          "may, from its ID split (allowed: eval_ood: {from: eval_id}, test_ood: {from: test_id}); "
                          "add size: N to carve records out of that split's file")
        base = values.get(origin)
        if base is None or base == OFF:
            return None, f"{shown(origin)}, but data.{origin} is not set; give data.{origin} or drop data.{split}"
        return Source(split, "twin", origin), ""
    if origin in SPLITS:
        base = values.get(origin)
        if origin == split or not isinstance(base, str) or base == OFF:
            why = "itself" if origin == split else "not a file" if isinstance(base, SplitSpec) else "not set"
            return None, (f"{shown(origin)} carves out of data.{origin}'s file, but data.{origin} is {why}; name "
                          "the file instead (from: path/to/records.jsonl)")
        problem = _path_problem(base)
        return (None, problem) if problem else (Source(split, "carve", base, resolve(base, root), **carve), "")
    if spec.size is None:
        return None, (f"{shown(origin)} is a file: add size: N (records) or a fraction 0 < size < 1 to carve "
                      f"records out of it, or write data.{split}: {cut(origin)} to read all of it")
    problem = _path_problem(origin)
    return (None, problem) if problem else (Source(split, "carve", origin, resolve(origin, root), **carve), "")


# ---------------------------------------------------------------- carving


def key_values(records: Sequence[tasks.Record], rows: Sequence[Mapping[str, Any]], group: str | None,
               match: str | None, where: str = "the file") -> tuple[list[str], tuple[str, str]]:
    """Each record's group value.

    Args:
        records: The file's records.
        rows: Their raw rows (same order), where a field named by ``group`` is read.
        group: ``id`` (None), ``text`` or a field of the rows.
        match: A regular expression applied to the value: the group is its first capture group, else the match.
        where: The file, named in the messages.

    Returns:
        One value per record, or ``[]`` and the problem as ``(key, message)``.
    """
    name = group or "id"
    if name in OWN_KEYS:
        values = [getattr(r, name) for r in records]
    else:
        missing = [r.id for r, row in zip(records, rows, strict=True) if row.get(name) is None]
        if len(missing) == len(records):
            fields = sorted({str(k) for row in rows[:100] for k in row} | set(OWN_KEYS))
            return [], ("group", f"{shown(name)} is not a field of the records of {where} (allowed: "
                                 f"{cut(', '.join(fields))}){did_you_mean(name, fields)}")
        if missing:
            return [], ("group", f"{shown(name)} is missing (or null) in {len(missing):,} of {len(records):,} "
                                 f"records of {where}, e.g. record {shown(missing[0])}; every record needs a "
                                 "group value")
        values = [_as_key(row[name]) for row in rows]
    if match is None:
        return values, ("", "")
    pattern = re.compile(match)
    found = [pattern.search(v) for v in values]
    misses = [v for v, m in zip(values, found, strict=True) if m is None]
    if misses:
        return [], ("match", f"{shown(match)} finds nothing in {len(misses):,} of {len(values):,} values of "
                             f"{name} in {where}, e.g. {shown(misses[0])}; every record's {name} must match")
    return [(m.group(1) if pattern.groups and m.group(1) is not None else m.group(0)) for m in found if m], ("", "")


def _as_key(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def group_numbers(keys: Sequence[Sequence[str]], texts: Sequence[str]) -> list[int]:
    """A group number per record: records that share a value of any key in ``keys``, or their text, share one.

    Numbers follow first appearance in the file, so a carve's outcome depends on its seed alone.
    """
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for values in [*keys, texts]:
        first: dict[str, int] = {}
        for i, value in enumerate(values):
            j = first.setdefault(value, i)
            if j != i:
                parent[find(i)] = find(j)
    numbers: dict[int, int] = {}
    return [numbers.setdefault(find(i), len(numbers)) for i in range(len(texts))]


def wanted(size: int | float, total: int) -> int:
    """Records a carve asks for: a count as given, a fraction of ``total`` rounded."""
    return size if isinstance(size, int) else round(size * total)


def carve(left: Sequence[int], groups: Sequence[int], size: int, seed: int) -> list[int]:
    """Whole groups drawn from ``left`` (record indices) in seeded random order until ``size`` records are taken.

    The result may exceed ``size`` by less than the last group's size. Returns the indices in file order.
    """
    members: dict[int, list[int]] = {}
    for i in left:
        members.setdefault(groups[i], []).append(i)
    order = list(members)
    random.Random(seed).shuffle(order)
    taken: list[int] = []
    for group in order:
        if len(taken) >= size:
            break
        taken.extend(members[group])
    return sorted(taken)


@dataclass(frozen=True)
class Partition:
    """One file's records split among the carves out of it and the rest.

    Attributes:
        carved: Carve split -> record indices, in file order.
        rest: The indices no carve took, in file order.
        problems: ``(key path under data, message)`` pairs; when any, nothing was carved.
    """

    carved: Mapping[str, list[int]]
    rest: list[int]
    problems: list[tuple[str, str]]


def partition(records: Sequence[tasks.Record], rows: Sequence[Mapping[str, Any]], carves: Sequence[Source],
              rest_for: Sequence[str]) -> Partition:
    """Carves ``carves`` (in order) out of one file's records.

    Groups join the group keys of every carve out of the file (and equal texts), so that each side holds whole
    groups under each key.

    Args:
        records: The file's records.
        rows: Their raw rows, same order.
        carves: The carve sources that name this file.
        rest_for: The splits that read the file as a plain path (they keep the rest).
    """
    where = cut(carves[0].location) if carves else ""
    keyed = [(src, *key_values(records, rows, src.group, src.match, where)) for src in carves]
    problems = [(f"{src.split}.{key}", message) for src, _, (key, message) in keyed if message]
    if problems or not carves:
        return Partition({}, list(range(len(records))), problems)
    groups = group_numbers([values for _, values, _ in keyed], [r.text for r in records])
    left, carved = list(range(len(records))), dict[str, list[int]]()
    for src in carves:
        want = wanted(src.size or 0, len(records))
        if want < 1:
            problems.append((f"{src.split}.size", f"{src.size:g} of the {len(records):,} records of {where} is "
                                                  "no record (allowed: a larger fraction, or a count >= 1)"))
            break
        if want > len(left):
            after = f" left after {', '.join(carved)} took theirs" if carved else ""
            problems.append((f"{src.split}.size", f"{want:,} records, but {where} has only {len(left):,}{after} "
                                                  f"(allowed: 1 to {max(len(left) - (1 if rest_for else 0), 1):,})"))
            break
        carved[src.split] = carve(left, groups, want, src.seed)
        taken = set(carved[src.split])
        left = [i for i in left if i not in taken]
    if not problems and rest_for and not left:
        last = carves[-1]
        problems.append((f"{last.split}.size", f"the carves out of {where} take all {len(records):,} of its records "
                                               f"(whole groups of {last.group_text()}), leaving none for "
                                               f"data.{', data.'.join(rest_for)}; carve fewer records"))
    return Partition(carved if not problems else {}, left, problems)


def describe(source: Source, count: int, total: int, carved: Mapping[str, int]) -> str:
    """Where a split's records came from, in words (``--check`` prints it).

    Args:
        source: The split's source.
        count: Its records before sub-sampling (``data.max_*``).
        total: The records of its file (0 for a twin).
        carved: Carve split -> records taken, of the carves out of the same file.
    """
    if source.kind == "twin":
        return f"{source.given}'s {count:,} records read with labels.ood_slots"
    if source.kind == "carve":
        size = f"{source.size:g} of them" if isinstance(source.size, float) else f"size {source.size}"
        return (f"carved {count:,} from {cut(source.location)} ({total:,} records; {size}, seed {source.seed}, "
                f"group {source.group_text()})")
    if carved:
        taken = ", ".join(f"{n:,} for {s}" for s, n in carved.items())
        return f"{cut(source.location)}: the {count:,} of {total:,} records left after carving {taken}"
    return f"{cut(source.location)} ({total:,} records)"
