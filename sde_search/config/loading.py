"""Loading a task file (with its plugins and data) and a search-space file into validated objects.

Each loader reads the YAML, applies ``--set`` overrides, validates the schema and runs the checks, and raises
one :class:`~sde_search.config.schema.ConfigError` holding every problem found.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sde_search import preflight, tasks
from sde_search.config.checks import check_compatible, check_space, check_task, check_type
from sde_search.config.messages import collect
from sde_search.config.schema import ConfigError, SpaceConfig, TaskConfig, with_label_codes
from sde_search.config.spaces import find_space
from sde_search.config.yamlfile import apply_overrides, data_root, read_yaml, resolve_path
from sde_search.data.files import first_line
from sde_search.data.records import load_splits
from sde_search.data.task import Task
from sde_search.tasks import clip


def _read(path: str | Path, overrides: Sequence[str]) -> tuple[Path, dict[str, Any]]:
    """The resolved path and the file's mapping with the ``--set`` overrides applied.

    Raises:
        ConfigError: When the file cannot be read as a YAML mapping or an override is malformed.
    """
    path = resolve_path(path)
    problems: list[str] = []
    raw = apply_overrides(read_yaml(path, problems), overrides, problems)
    if problems:
        raise ConfigError(problems)
    return path, raw


def load_task(path: str | Path, overrides: Sequence[str] = ()) -> Task:
    """Loads and validates a task file and its data.

    Args:
        path: The task YAML.
        overrides: ``key.path=value`` strings (``--set``), applied before validation.

    Returns:
        The loaded task.

    Raises:
        ConfigError: With every problem found.
    """
    path, raw = _read(path, overrides)
    problems: list[str] = []
    problems.extend(_load_plugins(raw.get("plugins"), path))
    config = None
    with collect(problems, str(path)):
        config = TaskConfig.model_validate(raw)
    if config is not None:
        problems.extend(check_task(config, path))
    elif isinstance(raw.get("type"), str):  # report a bad type together with the other mistakes
        problems.extend(check_type(raw["type"], path))
    if problems or config is None:
        raise ConfigError(problems)
    kind = tasks.TASK_TYPES[config.type]
    config = with_label_codes(config, kind)
    records, sources = load_splits(config, path, data_root(config, path), kind, problems)
    if problems:
        raise ConfigError(problems)
    return Task(config=config, path=path, kind=kind, splits=records, sources=sources)


def _load_plugins(modules: Any, path: Path) -> list[str]:
    """Imports the ``plugins:`` modules; a bad shape is left to the model check."""
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        return []
    problems = []
    for name in modules:
        try:
            tasks.load_plugins([name])
        except ImportError as exc:
            problems.append(f"{path}: plugins: {_plugin_problem(name, exc.__cause__ or exc)}")
    return problems


def _plugin_problem(name: str, cause: BaseException) -> str:
    """Why a plugin failed: not found on ``sys.path``, or found but raising while it was imported."""
    what = f"{preflight.shown(name)} could not be imported ({type(cause).__name__}: {clip(first_line(cause))})"
    missing = isinstance(cause, ModuleNotFoundError) and cause.name is not None \
        and f"{name}.".startswith(f"{cause.name}.")
    if missing:
        return (f"{what}; plugins must be importable modules: on PYTHONPATH or installed "
                "(the task file's folder is not searched)")
    return f"{what}; the module was found but raised while importing -- fix it or remove it from plugins"


def load_space(path: str | Path, overrides: Sequence[str] = ()) -> SpaceConfig:
    """Loads and validates a search-space file.

    Raises:
        ConfigError: With every problem found.
    """
    path, raw = _read(path, overrides)
    problems: list[str] = []
    space = None
    with collect(problems, str(path)):
        space = SpaceConfig.model_validate(raw)
    if space is not None:
        problems.extend(check_space(space, path))
    if problems or space is None:
        raise ConfigError(problems)
    return space


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--set`` values split into the task's and the space's (``space.`` prefix, removed)."""
    task = [o for o in overrides if not o.startswith("space.")]
    space = [o.removeprefix("space.") for o in overrides if o.startswith("space.")]
    return task, space


def load_task_and_space(task_path: str, space_path: str | None, overrides: Sequence[str],
                        address: str | None = None, new_search: bool = True) -> tuple[Task, SpaceConfig, Path]:
    """Loads a task and its search space and cross-checks them (raises ConfigError)."""
    task_over, space_over = split_overrides(overrides)
    task = load_task(task_path, task_over)
    if space_path is None:
        if task.config.search_space is None:
            raise ConfigError([f"{task.path}: search_space: no search space given (set it or pass --space)"])
        resolved = find_space(task.config.search_space, task.path.parent, f"{task.path}: search_space")
    else:
        resolved = find_space(space_path, Path.cwd(), "--space")
    space = load_space(resolved, space_over)
    check_compatible(task, space, resolved, local=address is None, new_search=new_search)
    return task, space, resolved
