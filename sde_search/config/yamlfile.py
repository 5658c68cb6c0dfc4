"""Reading task, space and design YAML: the strict loader, ``--set`` overrides and the paths a file names.

Every YAML goes through :func:`safe_load` (``yaml.SafeLoader`` that also refuses duplicate keys, deep nesting
and alias bombs); :func:`read_yaml` turns every way a file can fail into one problem line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from sde_search import tasks
from sde_search.config.schema import TaskConfig
from sde_search.data.files import file_problem, not_utf8
from sde_search.tasks import clip

MAX_YAML_DEPTH = 20
"""Deepest nesting of a task, space or design file (they need 4 levels)."""


MAX_YAML_VALUES = 10_000
"""Most values a task, space or design file may hold once its aliases (``*name``) are expanded."""


class YamlRefused(yaml.MarkedYAMLError):
    """A YAML document the strict loader refuses: a duplicate key, deep nesting, or aliases expanding too far."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (the same safe tags and values) that also refuses what it would silently accept.

    * a key given twice in one mapping, at any depth (SafeLoader keeps the last one without a word);
    * nesting deeper than :data:`MAX_YAML_DEPTH` (the composer recurses, so thousands of ``[`` raise RecursionError);
    * more than :data:`MAX_YAML_VALUES` values once aliases are expanded ("billion laughs": a few lines that
      expand to 10**9 values, which validation and messages would then walk), and an alias inside its own anchor.
    """

    def __init__(self, stream: str):
        """Starts a loader over ``stream`` with an empty key path."""
        super().__init__(stream)
        self._path: list[str] = []
        self._sizes: dict[int, int] = {}  # id(node) -> values it holds, aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # noqa: D102
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                self._path.append(_yaml_path_part(parent, index))
                raise self._refuse(f"the alias *{clip(event.anchor or '', 60)} is used inside its own anchored value "
                                   "(a value that contains itself); write the value out", event.start_mark)
            return node
        self._path.append(_yaml_path_part(parent, index))
        if len(self._path) > MAX_YAML_DEPTH:
            raise self._refuse(f"nested more than {MAX_YAML_DEPTH} levels deep (allowed: at most {MAX_YAML_DEPTH})",
                               self.peek_event().start_mark)
        node = super().compose_node(parent, index)
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        size = 1 + sum(self._sizes[id(c)] for c in children)
        if size > MAX_YAML_VALUES:
            raise self._refuse(f"holds more than {MAX_YAML_VALUES:,} values once its aliases (*name) are expanded "
                               f"(allowed: at most {MAX_YAML_VALUES:,}); write the values out, or use fewer aliases",
                               node.start_mark)
        self._sizes[id(node)] = size
        self._path.pop()
        return node

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:  # noqa: D102
        node: yaml.MappingNode = super().compose_mapping_node(anchor)
        seen: dict[Any, str] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *defaults' merges keys that the mapping's own keys may override
            ident = self._key_identity(key)
            if ident in seen:
                dotted = ".".join([*(p for p in self._path if p), key.value])
                raise YamlRefused(problem=f"duplicate key {clip(dotted, 120)!r} (first at {seen[ident]}); YAML "
                                  "would silently keep only the last one -- keep one of them",
                                  problem_mark=key.start_mark)
            seen[ident] = f"line {key.start_mark.line + 1}, column {key.start_mark.column + 1}"
        return node

    def _key_identity(self, key: yaml.ScalarNode) -> Any:
        """What the key loads as, compared as a dict would (``on``, ``true`` and ``1`` are one key), else its text."""
        try:
            value = self.construct_object(key)
            hash(value)
            return value
        except (yaml.YAMLError, ValueError, TypeError):
            return (key.tag, key.value)

    def _refuse(self, problem: str, mark: Any) -> YamlRefused:
        where = ".".join(p for p in self._path if p)
        return YamlRefused(problem=problem + (f" (at {clip(where, 120)})" if where else ""), problem_mark=mark)


def _yaml_path_part(parent: yaml.Node | None, index: Any) -> str:
    """The key-path part of a node being composed: its key, its list index, or "" (the root, a key itself)."""
    if isinstance(parent, yaml.SequenceNode):
        return str(index)
    if isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.ScalarNode):
        return clip(str(index.value), 60)
    return ""


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with the :class:`StrictLoader` checks (raises ``yaml.YAMLError``)."""
    loader = StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path, problems: list[str]) -> dict[str, Any]:
    """Reads a YAML mapping with :func:`safe_load`; problems are appended, ``{}`` returned on failure."""
    text = _read_text(path, problems)
    if text is None:
        return {}
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = clip(getattr(exc, "problem", None) or str(exc).splitlines()[0])
        if what == "but found another document":
            what = "a second YAML document starts here (a '---' line); the file must hold one mapping of keys"
        problems.append(f"{path}:{where.removeprefix(' at')}: {what}" if isinstance(exc, YamlRefused) else
                        f"{path}: not valid YAML{where}: {what}")
        return {}
    if data is None:
        problems.append(f"{path}: the file is empty; expected a YAML mapping of keys (key: value lines)")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a mapping of keys, got {type(data).__name__} (write key: value lines, "
                        "not '- ' list items)")
        return {}
    return data


def _read_text(path: Path, problems: list[str]) -> str | None:
    """The text of a UTF-8 file (a byte-order mark is skipped), or None with the problem appended."""
    try:
        return tasks.read_file(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: {not_utf8(exc)}")
    except OSError as exc:
        problems.append(f"{path}: {file_problem(exc, path, 'a YAML file')}")
    return None


def resolve_path(path: str | Path) -> Path:
    """``path`` made absolute, its symbolic links resolved where possible.

    A link loop (``Path.resolve`` raises RuntimeError on one) or a broken link is kept as given, so that reading it
    reports the problem under the name the user wrote.
    """
    try:
        return Path(path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # ValueError: a NUL byte in the name
        return Path(os.path.abspath(path))


def data_root(config: TaskConfig, path: Path) -> Path:
    """``data.root`` resolved: relative to the task file's folder; an absolute path or ``~`` taken as is."""
    return resolve_path(path.parent / os.path.expanduser(config.data.root))


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], problems: list[str]) -> dict[str, Any]:
    """Applies ``key.path=value`` overrides (values parsed as YAML scalars) to a raw mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item!r}: expected key.path=value")
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {item!r}: {part} is not a mapping")
                break
        else:
            try:
                node[leaf] = safe_load(raw) if raw else ""
            except yaml.YAMLError as exc:
                why = f" ({clip(exc.problem or '', 120)})" if isinstance(exc, YamlRefused) else ""
                problems.append(f"--set {clip(item)!r}: the value is not a valid YAML scalar{why} (quote it)")
    return data
