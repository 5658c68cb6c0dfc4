"""A plugin whose own dependency is missing (tests/bad/plugin_dependency_missing.yaml)."""

import sde_no_such_dependency  # noqa: F401
