"""The pure core and ``--check`` never import the heavy libraries (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "ray", "mlflow", "datasets")
PURE = ("design", "tasks", "config", "render", "metrics", "cli", "synthetic", "analysis", "export", "verdicts",
        "splits", "generations")

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
