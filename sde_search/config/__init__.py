"""Task and search-space YAML -> frozen, validated config objects.

One strict loader: every YAML goes through ``yaml.safe_load``, then pydantic v2
models with ``extra="forbid"`` and strict types. Every problem found (unknown
key with "did you mean", wrong type, value outside the allowed set, missing or
empty data, labels outside the schema, inconsistent settings) is collected into
one :class:`ConfigError` whose lines read ``file: key.path: what is wrong``.

This package's modules, bottom up: :mod:`~sde_search.config.schema` (the models),
:mod:`~sde_search.config.messages` (pydantic errors in words), :mod:`~sde_search.config.yamlfile`
(the strict YAML reader, ``--set``), :mod:`~sde_search.config.spaces` (built-in search spaces),
:mod:`~sde_search.config.checks` (checks beyond the schema) and :mod:`~sde_search.config.loading`
(the loaders). The records and the loaded :class:`Task` live in :mod:`sde_search.data`. This module
only re-exports the names other modules use.

Pure core: never imports torch, Ray or MLflow.
"""

from __future__ import annotations

# Every class of the schema is re-exported, used elsewhere or not: the saved Tune state of a search started
# before this package was split may name one as sde_search.config.<class>, and --resume unpickles it.
from sde_search.config.checks import check_compatible, check_design, model_info, report_range, visible_gpus
from sde_search.config.loading import load_space, load_task, load_task_and_space, split_overrides
from sde_search.config.schema import (
    OBJECTIVE_METRIC,
    PRETRAINED_TRAIN,
    AshaConfig,
    BudgetConfig,
    ConfigError,
    DataConfig,
    LabelsConfig,
    MetricsConfig,
    ModelConfig,
    Range,
    ResourcesConfig,
    SamplerConfig,
    SpaceConfig,
    TaskConfig,
    TemplateConfig,
    TrackingConfig,
    TrainConfig,
    codes_text,
    label_codes,
)
from sde_search.config.spaces import builtin_spaces, find_space
from sde_search.config.yamlfile import StrictLoader, YamlRefused, read_yaml, resolve_path, safe_load
from sde_search.data.files import not_utf8
from sde_search.data.task import Task

__all__ = [
    "OBJECTIVE_METRIC",
    "PRETRAINED_TRAIN",
    "AshaConfig",
    "BudgetConfig",
    "ConfigError",
    "DataConfig",
    "LabelsConfig",
    "MetricsConfig",
    "ModelConfig",
    "Range",
    "ResourcesConfig",
    "SamplerConfig",
    "SpaceConfig",
    "StrictLoader",
    "Task",
    "TaskConfig",
    "TemplateConfig",
    "TrackingConfig",
    "TrainConfig",
    "YamlRefused",
    "builtin_spaces",
    "check_compatible",
    "check_design",
    "codes_text",
    "find_space",
    "label_codes",
    "load_space",
    "load_task",
    "load_task_and_space",
    "model_info",
    "not_utf8",
    "read_yaml",
    "report_range",
    "resolve_path",
    "safe_load",
    "split_overrides",
    "visible_gpus",
]
