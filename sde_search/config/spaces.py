"""The search spaces shipped with the package, and the file a ``search_space:`` / ``--space`` value names."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from sde_search import preflight
from sde_search.config.schema import ConfigError
from sde_search.config.yamlfile import resolve_path

SPACES_PACKAGE = "sde_search.search_spaces"
"""The package whose ``*.yaml`` files are the built-in search spaces (the repository's ``search_spaces/``)."""


_SPACE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def builtin_spaces() -> dict[str, Path]:
    """The search spaces shipped with the package, by name (``quick`` -> its ``quick.yaml``), sorted.

    They are found through the import system, so a wheel and an editable install read them alike. A source
    tree imported without being installed has no such package; its ``search_spaces/`` folder serves instead.
    """
    spec = importlib.util.find_spec(SPACES_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        folders = [Path(p) for p in spec.submodule_search_locations]
    else:
        folders = [Path(__file__).resolve().parent.parent.parent / "search_spaces"]
    return {p.stem: p for p in sorted(f for folder in folders for f in folder.glob("*.yaml"))}


def find_space(value: str, base: Path, where: str) -> Path:
    """The search-space file that ``value`` names: a built-in space by name, else a path relative to ``base``.

    A value made of letters, digits, ``_`` and ``-`` only (no folder, no ``.yaml``) is a name; write
    ``./name`` for a file without a suffix.

    Args:
        value: ``search_space:`` of a task file, or ``--space``.
        base: The folder a relative path starts from (the task file's folder, or the working directory).
        where: What the messages name first, e.g. ``task.yaml: search_space``.

    Returns:
        The built-in space's file, or ``base / value`` made absolute (not checked: loading it reports a
        missing file).

    Raises:
        ConfigError: A name that no built-in space has; the message lists the built-in names.
    """
    if not _SPACE_NAME.fullmatch(value):
        return resolve_path(base / value)
    spaces = builtin_spaces()
    if value in spaces:
        return spaces[value]
    raise ConfigError([f"{where}: {preflight.shown(value)} is not a built-in search space"
                       f"{preflight.did_you_mean(value, list(spaces))} (built-in: {', '.join(spaces) or 'none found'}; "
                       "a file is named by its path, e.g. spaces/mine.yaml)"])
