"""Pydantic's validation errors rewritten as one line each: ``key.path: what is wrong (allowed: ...)``.

Adds "did you mean" for unknown keys, the field's own description where it says what a value may be, and
the allowed values of a search space's design dimensions; of the errors a union-typed field reports (one per
member), only the useful ones are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ValidationError

from sde_search import preflight
from sde_search.config.schema import SPLITS, Range, SpaceConfig, TaskConfig, TrainConfig
from sde_search.design import DIMENSIONS
from sde_search.splits import SplitSpec
from sde_search.tasks import clip

_UNION_TAGS = {"str", "int", "float", "bool", "list"}


def _is_union_tag(part: Any) -> bool:
    """Whether a pydantic loc part names a union member (``str``, ``list[str]``, ``function-after[...]``)."""
    return isinstance(part, str) and ("[" in part or part in _UNION_TAGS)


def _clean_loc(loc: Sequence[Any]) -> tuple[Any, ...]:
    """The key path of an error, without the union-member tags pydantic inserts."""
    return tuple(p for p in loc if not _is_union_tag(p))


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model that owns the key at ``loc`` (for "did you mean" suggestions)."""
    if any(isinstance(p, str) and "Range" in p for p in loc):  # a {type, low, high} range inside a union
        return Range
    if any(isinstance(p, str) and "SplitSpec" in p for p in loc):  # a carve {from, size, ...} inside a union
        return SplitSpec
    current: Any = model
    for part in _clean_loc(loc)[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        current = current.model_fields[part].annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def describe(err: Mapping[str, Any], model: type[BaseModel]) -> str:
    """One pydantic error of a ``model`` file as ``key.path: what is wrong`` (with hints where they help)."""
    loc = _clean_loc(err["loc"])
    key = ".".join(clip(str(p), 60) for p in loc) or "(top level)"  # a key, too, may be a huge user value
    value, kind = err.get("input"), err["type"]
    if kind == "extra_forbidden":
        owner = _model_at(model, err["loc"])
        allowed = [f.alias or name for name, f in owner.model_fields.items()] if owner else []  # 'from', not 'from_'
        hint = preflight.did_you_mean(str(loc[-1]), allowed) if allowed else ""
        return f"{key}: unknown key{hint} (allowed: {', '.join(allowed)})" if allowed else f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: required key is missing{_field_hint(model, err['loc'])}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{key}: expected a mapping of keys{_keys_hint(model, err['loc'])}, got {clip(repr(value))}"
    if isinstance(value, bool):  # strict bool fields accept booleans, so this field wanted something else
        return (f"{key}: got the boolean {value} -- YAML 1.1 reads no/yes/on/off as booleans; "
                f"quote the word (e.g. \"no\") or use a short lowercase value ({err['msg']})"
                f"{_design_hint(model, loc)}")
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
        return (f"{key}: {clip(repr(value))} is read as a string by YAML; write it with a dot and signed exponent, "
                "e.g. 1.0e-4")
    explained = ("string_pattern_mismatch", "less_than_equal", "less_than")  # the field says why
    split_shape = model is TaskConfig and len(loc) == 2 and loc[0] == "data" and loc[1] in SPLITS  # str or mapping
    hint = _field_hint(model, err["loc"]) if kind in explained or split_shape else _design_hint(model, loc)
    return f"{key}: {err['msg'].removeprefix('Value error, ')} (got {clip(repr(value))}){hint}"


def _field_hint(model: type[BaseModel], loc: Sequence[Any]) -> str:
    """`` -- <the field's description>`` for the key at ``loc``, or "" when it has none."""
    owner, name = _model_at(model, loc), _clean_loc(loc)[-1]
    fields = {f.alias or key: f for key, f in owner.model_fields.items()} if owner else {}  # keys as written
    found = fields.get(name) if isinstance(name, str) else None
    return f" -- {found.description.rstrip('.')}" if found and found.description else ""


def _keys_hint(model: type[BaseModel], loc: Sequence[Any]) -> str:
    """`` (allowed keys: ...)`` when the value at ``loc`` should be a config section (or a space's design/train)."""
    owner = _model_at(model, [*loc, "?"])
    keys = list(owner.model_fields) if owner else []
    if model is SpaceConfig and tuple(loc) in (("design",), ("train",)):
        keys = list(DIMENSIONS) if loc[0] == "design" else list(TrainConfig.model_fields)
    return f" (allowed keys: {', '.join(keys)})" if keys else ""


def _design_hint(model: type[BaseModel], loc: Sequence[Any]) -> str:
    """`` (allowed: ...)`` for a value under a space's ``design.<dimension>``."""
    if model is SpaceConfig and len(loc) >= 2 and loc[0] == "design" and loc[1] in DIMENSIONS:
        return f" (allowed: {', '.join(DIMENSIONS[loc[1]])})"
    return ""


@contextmanager
def collect(problems: list[str], prefix: str) -> Iterator[None]:
    """Turns pydantic and value errors raised inside into lines of ``problems``."""
    try:
        yield
    except ValidationError as exc:
        models: dict[str, type[BaseModel]] = {"TaskConfig": TaskConfig, "SpaceConfig": SpaceConfig,
                                              "TrainConfig": TrainConfig}
        owner = models.get(exc.title, TaskConfig)
        problems.extend(f"{prefix}: {describe(e, owner)}" for e in unique_errors(exc.errors()))


def unique_errors(errors: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Union-typed fields report one error per member: keep the deepest ones, and one per key path.

    A value such as ``{type: float, low: 1, hihg: 2}`` fails as a string, a number, a list and a range;
    only the range member looked inside it, so its errors (``train.lr.hihg``) are the useful ones. At the
    same depth, a member's own check (``low must be below high``) wins over "not a string".
    """
    locs = [_clean_loc(e["loc"]) for e in errors]
    best: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for e, loc in zip(errors, locs, strict=True):
        if any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs):
            continue  # another union member got further inside this value
        if loc not in best or (_wrong_type(best[loc]) and not _wrong_type(e)):
            best[loc] = e  # a member that accepted the value's shape says what is wrong with it (low >= high)
    return list(best.values())


def _wrong_type(err: Mapping[str, Any]) -> bool:
    """Whether an error only says the value is not of a member's type (``Input should be a valid string``)."""
    return str(err["type"]).endswith("_type")
