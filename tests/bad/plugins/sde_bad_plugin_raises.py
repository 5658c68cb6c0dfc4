"""A plugin that fails on import (tests/bad/plugin_raises.yaml)."""

raise RuntimeError("this plugin always fails on import")
