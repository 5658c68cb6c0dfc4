"""The pure core and ``--check`` never import the heavy libraries (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "ray", "mlflow", "datasets")
# data.* first: they must import on their own, before the config package that imports them
PURE = ("data.records", "data.task", "design", "tasks", "config", "render", "metrics", "cli", "synthetic", "analysis",
        "export", "verdicts", "splits", "generations", "console", "cli_check", "costs")

_SCRIPT = """
import contextlib, io, json, sys
import {modules}
import sde_search.cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = sde_search.cli.main(["--task", "examples/demo_masa.yaml", "--check"])
def loaded(name):
    return any(m == name or m.startswith(name + ".") for m in sys.modules)
print(json.dumps({{"rc": rc, "check_output": out.getvalue(), "heavy": [m for m in {heavy!r} if loaded(m)],
                  "control": [m for m in ("yaml", "pydantic", "sde_search.render") if loaded(m)]}}))
"""


def test_pure_core_and_check_import_no_heavy_library() -> None:
    script = _SCRIPT.format(modules=", ".join(f"sde_search.{m}" for m in PURE), heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0
    assert "round trip: ok" in result["check_output"]
    assert result["control"] == ["yaml", "pydantic", "sde_search.render"]  # the detection does see imports
    assert result["heavy"] == [], f"the pure core imported {result['heavy']}"


# The floors, bottom up: a module imports only from its own floor or lower ones (deferred imports included).
FLOORS = (
    ("design", "metrics", "tasks", "preflight", "splits", "synthetic", "scaffold", "console", "verdicts", "pruner",
     "data", "data.files", "costs"),                                             # pure basics
    ("config", "config.schema", "config.messages", "config.yamlfile", "config.spaces", "config.checks",
     "config.loading", "data.records", "data.task"),                             # config and the loaded task
    ("parse", "render", "analysis", "generations", "export", "render_check", "seeds", "steps", "sampler", "plots",
     "batches"),                                                                 # core that reads the config
    ("runfolder", "report", "model", "faults", "scoring", "trial", "robust", "seedruns",
     "estimate"),                                                                # run folder, model, trial
    ("tracking",),                                                               # every MLflow call
    ("stages", "resume", "searcher", "raynodes", "progress", "storage", "search"),        # search wiring
    ("cli", "cli_check", "cli_train", "cli_ui", ""),                             # the commands
)


def _shape() -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    import structure  # noqa: PLC0415 (bench/ is not a package)

    return structure.measure(ROOT / "sde_search")


def test_every_module_sits_on_a_floor_and_imports_only_downward() -> None:
    shape = _shape()
    floor = {f"sde_search.{m}".rstrip("."): i for i, mods in enumerate(FLOORS) for m in mods}
    assert sorted(set(shape["modules"]) - set(floor)) == [], "a new module needs its floor in FLOORS"
    upward = [f"{m} (floor {floor[m]}) -> {d} (floor {floor[d]})"
              for m, deps in shape["imports"].items() for d in [*deps, *shape["deferred_imports"].get(m, [])]
              if floor[d] > floor[m]]
    assert upward == []


def test_no_import_cycle_not_even_a_deferred_one() -> None:
    shape = _shape()
    assert shape["cycles_any"] == [], shape["cycles_any"]
    assert shape["imports"]["sde_search.search"], "the graph is read (a control)"
