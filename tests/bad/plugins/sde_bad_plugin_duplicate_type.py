"""A plugin that registers a built-in task type again (tests/bad/plugin_duplicate_type.yaml)."""

from sde_search.tasks import Entities, task_type


@task_type
class Clash(Entities):
    name = "entities"
