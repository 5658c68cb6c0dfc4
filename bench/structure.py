"""The package's shape: modules with line counts, the import graph, cycles, and the longest functions.

    python bench/structure.py [--root sde_search] [--top 15] [--json OUT]

Reads the source with ``ast`` only (nothing is imported), so it measures any checkout, e.g. a ``git worktree``
of an older commit beside this one. Imports are split into module-level ones and those inside a function (or
under ``if TYPE_CHECKING:``), because only the module-level ones load a module when its importer is imported;
a cycle among them is what the restructuring removes, and a cycle hidden behind a deferred import counts too.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path


def _modules(root: Path) -> dict[str, Path]:
    pkg = root.name
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    assert any(n == pkg for n in out), f"{root} is not a package"
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(module-level, deferred) imports of package modules by module ``name``."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    deferred: set[str] = set()
    is_pkg = path.name == "__init__.py"

    def resolve(node: ast.Import | ast.ImportFrom) -> set[str]:
        found = set()
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    found.add(alias.name)
            return found
        base = node.module or ""
        if node.level:
            parent = name.split(".") if is_pkg else name.split(".")[:-1]
            parent = parent[: len(parent) - (node.level - 1)]
            base = ".".join([*parent, base] if base else parent)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            found.add(full if full in known else base)
        return {f for f in found if f in known}

    def walk(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (deferred if inside else top).update(resolve(child))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or (
                    isinstance(child, ast.If) and _is_type_checking(child)):
                walk(child, True)
            else:
                walk(child, inside)

    walk(tree, False)
    top.discard(name)
    deferred.discard(name)
    return top, deferred - top


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _functions(name: str, path: Path) -> list[dict]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            params = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs) if a.arg not in ("self", "cls")]
            out.append({"function": f"{name}.{node.name}", "lines": node.end_lineno - node.lineno + 1,
                        "params": len(params) + bool(args.vararg) + bool(args.kwarg)})
    return out


def measure(root: Path, top_n: int = 15) -> dict:
    """The shape of the package at ``root``."""
    mods = _modules(root)
    known = set(mods)
    lines = {n: len(p.read_text().splitlines()) for n, p in mods.items()}
    top: dict[str, set[str]] = {}
    every: dict[str, set[str]] = {}
    for n, p in mods.items():
        t, d = _imports(n, p, known)
        top[n] = t
        every[n] = t | d
    funcs = [f for n, p in mods.items() for f in _functions(n, p)]
    return {
        "modules": lines,
        "total_lines": sum(lines.values()),
        "imports": {n: sorted(v) for n, v in top.items()},
        "deferred_imports": {n: sorted(every[n] - top[n]) for n in mods if every[n] - top[n]},
        "cycles_module_level": _cycles(top),
        "cycles_any": _cycles(every),
        "longest": sorted(funcs, key=lambda f: -f["lines"])[:top_n],
        "most_params": sorted(funcs, key=lambda f: -f["params"])[:top_n],
    }


def render(shape: dict) -> str:
    """The shape as text."""
    strip = lambda n: n.split(".", 1)[1] if "." in n else n  # noqa: E731
    out = [f"## Modules ({len(shape['modules'])}, {shape['total_lines']} lines)", ""]
    out += [f"{lines:6d}  {strip(n)}" for n, lines in sorted(shape["modules"].items(), key=lambda kv: -kv[1])]
    out += ["", "## Imports at module level (-> package modules; deferred ones in brackets)", ""]
    for n in sorted(shape["imports"]):
        deps = ", ".join(strip(d) for d in shape["imports"][n])
        later = shape["deferred_imports"].get(n)
        extra = f"  [{', '.join(strip(d) for d in later)}]" if later else ""
        out.append(f"{strip(n)} -> {deps or '-'}{extra}")
    out += ["", "## Cycles", ""]
    out.append("module level: " + ("; ".join(" <-> ".join(map(strip, c)) for c in shape["cycles_module_level"])
                                   or "none"))
    out.append("any import (deferred included): " + ("; ".join(" <-> ".join(map(strip, c))
                                                               for c in shape["cycles_any"]) or "none"))
    out += ["", "## Longest functions", "", "| lines | params | function |", "|---:|---:|---|"]
    out += [f"| {f['lines']} | {f['params']} | {strip(f['function'])} |" for f in shape["longest"]]
    out += ["", "## Most parameters", "", "| params | lines | function |", "|---:|---:|---|"]
    out += [f"| {f['params']} | {f['lines']} | {strip(f['function'])} |" for f in shape["most_params"]]
    return "\n".join(out)


def main() -> int:
    """Prints the shape; ``--json`` also writes it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / "sde_search"))
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    shape = measure(Path(args.root), args.top)
    print(render(shape))
    if args.json:
        Path(args.json).write_text(json.dumps(shape, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
