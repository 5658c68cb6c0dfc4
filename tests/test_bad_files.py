"""Bad inputs too big or too odd to ship in ``tests/bad/``: generated here, run like the bad-input suite.

Deep nesting (YAML, ``--set``, a JSONL line, a CSV cell), oversized CSV cells, huge values that a message could
quote, and paths that are not plain files (a FIFO, a character device, a symbolic link loop, a broken link, a folder)
for the task, space, ``--design`` and data files. Each must end ``sde-search ... --check`` with exit 2, only
``error: `` lines of bounded length, no traceback and no hang. In-process tests cover what a subprocess cannot
(permission denied when the tests run as root) and the controls that must still load (byte-order marks, YAML merge
keys, every YAML file shipped with the project).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from sde_search import config, tasks
from sde_search.config import ConfigError, load_task

ROOT = Path(__file__).resolve().parents[1]
OK_TASK = ROOT / "tests" / "bad" / "ok" / "task.yaml"
OK_SPACE = ROOT / "tests" / "bad" / "ok" / "space.yaml"
MASA = ROOT / "tests" / "masa_fixed"
LABELS = ("labels: {slots: [food, drinks, price, staff], ood_slots: [parking, noise, decor, location], "
          "values: [positive, negative, neutral], unmentioned: unmentioned}\n")
LINE_LIMIT = 600  # no message line quotes a whole user value
POSIX = hasattr(os, "mkfifo")


def _task(folder: Path, name: str, train: str = "train.jsonl", root: Path | str = MASA, extra: str = "",
          task_type: str = "aspect_sentiment", labels: str = LABELS) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\ntype: {task_type}\ndata: {{root: '{root}', train: '{train}', "
                    f"eval_id: '{MASA / 'dev.jsonl'}', max_train: 20, max_eval: 10}}\n{labels}"
                    f"search_space: '{OK_SPACE}'\n{extra}", encoding="utf-8")
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _loop(path: Path) -> Path:
    path.symlink_to(path)
    return path


def _broken(path: Path) -> Path:
    path.symlink_to(path.parent / "nowhere")
    return path


DEEP = "[" * 5000 + "]" * 5000
Builder = Callable[[Path], list[str]]


def _deep_json(w: Path) -> list[str]:
    (w / "deep.jsonl").write_text('{"id": "d", "text": "x", "labels": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    return ["--task", str(_task(w, "deepjson", "deep.jsonl", w))]


def _deep_csv(w: Path) -> list[str]:  # 100,000 characters: inside the CSV cell limit, so JSON sees it
    (w / "deep.csv").write_text('id,text,labels\nd,x,"' + "[" * 50_000 + "]" * 50_000 + '"\n')
    return ["--task", str(_task(w, "deepcsv", "deep.csv", w))]


def _long_cell(w: Path) -> list[str]:
    (w / "long.csv").write_text("id,text,labels\nd," + "x" * 200_000 + ',"{""food"": ""positive""}"\n')
    return ["--task", str(_task(w, "longcell", "long.csv", w))]


def _unclosed_quote(w: Path) -> list[str]:
    (w / "unclosed.csv").write_text('id,text,labels\nd,"x,{}\n' + "e,more text,{}\n" * 20_000)
    return ["--task", str(_task(w, "unclosed", "unclosed.csv", w))]


def _huge_item(w: Path) -> list[str]:
    (w / "item.jsonl").write_text(json.dumps({"id": "h", "text": "t", "entities": ["z" * 2_000_000]}) + "\n")
    return ["--task", str(_task(w, "hugeitem", "item.jsonl", w, task_type="entities",
                                labels="labels: {slots: [person]}\n"))]


def _huge_name(w: Path) -> list[str]:
    path = _task(w, "hugename")
    path.write_text(path.read_text().replace("name: hugename", "name: " + "x y" * 3_000))
    return ["--task", str(path)]


def _deep_space(w: Path) -> list[str]:
    (w / "deep_space.yaml").write_text(f"design: {DEEP}\n")
    return ["--task", str(OK_TASK), "--space", str(w / "deep_space.yaml")]


def _deep_design(w: Path) -> list[str]:
    (w / "deep_design.yaml").write_text(f"design: {{output_format: {DEEP}}}\n")
    return ["--task", str(OK_TASK), "--design", str(w / "deep_design.yaml")]


def _root_loop(w: Path) -> list[str]:
    return ["--task", str(_task(w, "rootloop", root=_loop(w / "rootloop")))]


def _search_space_loop(w: Path) -> list[str]:
    path = _task(w, "spaceloop")
    path.write_text(path.read_text().replace(str(OK_SPACE), str(_loop(w / "space_loop.yaml"))))
    return ["--task", str(path)]


def _data(w: Path, name: str, make: Callable[[Path], Path]) -> list[str]:
    return ["--task", str(_task(w, f"data_{name}", make(w / f"{name}.jsonl").name, w))]


NESTED = "nested more than 20 levels deep (allowed: at most 20)"
NOT_REGULAR = "is a FIFO (named pipe), not a regular file (reading it could block forever)"
LOOP = "cannot be read: a symbolic link loop (the link leads back to itself)"
BROKEN = "file not found: a broken symbolic link (it points to"
CASES: dict[str, tuple[Builder, str, bool]] = {  # id: (builder, expected message, needs POSIX)
    "yaml_task_nested": (lambda w: ["--task", str(_task(w, "deep", extra=f"x: {DEEP}\n"))], NESTED, False),
    "yaml_space_nested": (_deep_space, NESTED + " (at design.0.0.0", False),
    "yaml_design_nested": (_deep_design, NESTED + " (at design.output_format.0", False),
    "set_value_nested": (lambda w: ["--task", str(OK_TASK), "--set", f"name={DEEP}"],
                         f"the value is not a valid YAML scalar ({NESTED}", False),
    "jsonl_nested": (_deep_json, "deep.jsonl: line 1: JSON nested too deeply (allowed: at most 100 levels", False),
    "csv_cell_nested": (_deep_csv, "deep.csv: line 2, column 'labels': JSON nested too deeply", False),
    "csv_cell_too_long": (_long_cell, "long.csv: line 2: a cell longer than 131,072 characters", False),
    "csv_unclosed_quote": (_unclosed_quote, "unclosed.csv: line 2: a cell longer than 131,072 characters -- most "
                           "often a quote that is never closed", False),
    "jsonl_huge_value_quoted": (_huge_item, "item.jsonl row 1: entities[0]: expected an object", False),
    "yaml_huge_value_quoted": (_huge_name, "name: String should match pattern", False),
    "task_fifo": (lambda w: ["--task", str(_fifo(w / "task.yaml"))], f"task.yaml: {NOT_REGULAR}; give a YAML file",
                  True),
    "space_fifo": (lambda w: ["--task", str(OK_TASK), "--space", str(_fifo(w / "space.yaml"))],
                   f"space.yaml: {NOT_REGULAR}", True),
    "design_fifo": (lambda w: ["--task", str(OK_TASK), "--design", str(_fifo(w / "design.yaml"))],
                    f"design.yaml: {NOT_REGULAR}", True),
    "data_fifo": (lambda w: _data(w, "fifo", _fifo), f"fifo.jsonl: {NOT_REGULAR}; give a .jsonl, .json or .csv file",
                  True),
    "data_device": (lambda w: ["--task", str(_task(w, "device", "null", "/dev"))],
                    "/dev/null: is a character device, not a regular file", True),
    "task_link_loop": (lambda w: ["--task", str(_loop(w / "task_loop.yaml"))], f"task_loop.yaml: {LOOP}", True),
    "space_link_loop": (lambda w: ["--task", str(OK_TASK), "--space", str(_loop(w / "space_loop.yaml"))],
                        f"space_loop.yaml: {LOOP}", True),
    "design_link_loop": (lambda w: ["--task", str(OK_TASK), "--design", str(_loop(w / "design_loop.yaml"))],
                         f"design_loop.yaml: {LOOP}", True),
    "data_link_loop": (lambda w: _data(w, "loop", _loop), f"loop.jsonl: {LOOP}", True),
    "data_root_link_loop": (_root_loop, f"rootloop/train.jsonl: {LOOP} (relative paths resolve against data.root",
                            True),
    "search_space_link_loop": (_search_space_loop, "search_space: file not found: ", True),
    "task_broken_link": (lambda w: ["--task", str(_broken(w / "task_broken.yaml"))], f"task_broken.yaml: {BROKEN}",
                         True),
    "space_broken_link": (lambda w: ["--task", str(OK_TASK), "--space", str(_broken(w / "space_broken.yaml"))],
                          f"space_broken.yaml: {BROKEN}", True),
    "design_broken_link": (lambda w: ["--task", str(OK_TASK), "--design", str(_broken(w / "design_broken.yaml"))],
                           f"design_broken.yaml: {BROKEN}", True),
    "data_broken_link": (lambda w: _data(w, "broken", _broken), f"broken.jsonl: {BROKEN}", True),
    "space_folder": (lambda w: ["--task", str(OK_TASK), "--space", str(w)], ": is a folder, not a YAML file", False),
    "design_folder": (lambda w: (w / "folder.yaml").mkdir() or ["--task", str(OK_TASK), "--design",
                                                                  str(w / "folder.yaml")],
                      "folder.yaml: is a folder, not a YAML file", False),
}


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sde_search.cli", *args, "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def odd_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Builds every case in its own folder and runs them all, a few at a time."""
    args = {}
    for name, (build, _, posix) in CASES.items():
        if posix and not POSIX:
            continue
        args[name] = build(tmp_path_factory.mktemp(name))
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(args, pool.map(_run, args.values()), strict=True))


@pytest.mark.parametrize("name", list(CASES))
def test_odd_input(name: str, odd_runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    if name not in odd_runs:
        pytest.skip("needs FIFOs and symbolic links (POSIX)")
    run, expect = odd_runs[name], CASES[name][1]
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert run.returncode == 2, run.stderr[-2000:]
    assert expect in run.stderr, run.stderr[-2000:]
    lines = run.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), run.stderr[-2000:]
    assert max(len(line) for line in lines) < LINE_LIMIT, "a message quotes a whole value"
    assert run.stdout == ""


def test_the_real_search_stops_at_a_duplicate_key_or_a_failing_plugin(tmp_path: Path) -> None:
    """Without --check too: nothing is created (the swapped data: block must never reach a run)."""
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "bad" / "plugins"), "HF_HUB_OFFLINE": "1"}
    for fixture in ("duplicate_key_data.yaml", "plugin_reader_raises.yaml"):
        run = subprocess.run([sys.executable, "-m", "sde_search.cli", "--task", f"tests/bad/{fixture}",
                              "--runs-dir", str(runs), "--name", "must-not-exist"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, env=env)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert not runs.exists() or list(runs.iterdir()) == []


# ---------------------------------------------------------------- in process


def test_permission_denied_is_one_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads any file, so the refusal is simulated where the file is opened."""
    task = _task(tmp_path, "perm")

    def refuse(path: str | Path, flags: int, *args: object) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tasks.os, "open", refuse)
    with pytest.raises(ConfigError) as info:
        load_task(task)
    assert info.value.problems == [f"{task}: cannot be read: permission denied (check the read permission of the "
                                   "file and its folders)"]


@pytest.mark.skipif(not POSIX or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_data_file(tmp_path: Path) -> None:
    data = tmp_path / "secret.jsonl"
    data.write_text((MASA / "train.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    data.chmod(0)
    with pytest.raises(ConfigError, match="secret.jsonl: cannot be read: permission denied"):
        load_task(_task(tmp_path, "unreadable", "secret.jsonl", tmp_path))


def test_byte_order_marks_are_accepted(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    (tmp_path / "bom.jsonl").write_bytes(bom + (MASA / "train.jsonl").read_bytes())
    rows = [json.loads(line) for line in (MASA / "dev.jsonl").read_text(encoding="utf-8").splitlines()[:10]]
    csv_text = "id,text,labels\n" + "".join(
        f'{r["id"]},"{r["text"]}","{json.dumps(r["labels"]).replace(chr(34), chr(34) * 2)}"\n' for r in rows)
    (tmp_path / "bom.csv").write_bytes(bom + csv_text.encode("utf-8"))
    task = _task(tmp_path, "bom", "bom.jsonl", tmp_path)
    task.write_bytes(bom + task.read_bytes().replace(f"'{MASA / 'dev.jsonl'}'".encode(), b"bom.csv"))
    loaded = load_task(task)
    assert len(loaded.splits["train"]) == 20 and len(loaded.splits["eval_id"]) == 10


def test_strict_yaml_reads_like_safe_load() -> None:
    """Every YAML file the project ships loads to the same value as with yaml.safe_load."""
    files = [p for d in ("examples", "search_spaces", "tests/bad/ok") for p in (ROOT / d).rglob("*.yaml")]
    assert len(files) >= 5
    for path in files:
        text = path.read_text(encoding="utf-8-sig")
        assert config.safe_load(text) == yaml.safe_load(text), path


@pytest.mark.parametrize(("text", "value"), [
    ("base: &b {a: 1, b: 2}\nx: {<<: *b, a: 3}\n", {"base": {"a": 1, "b": 2}, "x": {"a": 3, "b": 2}}),
    ("a: &s [x, y]\nb: *s\n", {"a": ["x", "y"], "b": ["x", "y"]}),
    ("- {a: 1}\n- {a: 2}\n", [{"a": 1}, {"a": 2}]),
])
def test_strict_yaml_keeps_merge_keys_and_small_aliases(text: str, value: object) -> None:
    assert config.safe_load(text) == value


@pytest.mark.parametrize(("text", "problem"), [
    ("on: 1\ntrue: 2\n", "duplicate key 'true' (first at line 1, column 1)"),
    ("1: a\ntrue: b\n", "duplicate key 'true' (first at line 1, column 1)"),
    ("a:\n  b: {c: 1, c: 2}\n", "duplicate key 'a.b.c' (first at line 2, column 7)"),
    ("- {k: 1}\n- {k: 1, k: 2}\n", "duplicate key '1.k' (first at line 2, column 4)"),
    ("a: &a [*a]\n", "the alias *a is used inside its own anchored value"),
    ("x: " + "[" * 21 + "]" * 21 + "\n", "nested more than 20 levels deep"),
    ("a: &a [" + ", ".join(["q"] * 200) + "]\nb: [" + ", ".join(["*a"] * 60) + "]\n",
     "holds more than 10,000 values once its aliases (*name) are expanded"),
])
def test_strict_yaml_refuses(text: str, problem: str) -> None:
    with pytest.raises(config.YamlRefused) as info:
        config.safe_load(text)
    assert problem in str(info.value.problem)


@pytest.mark.parametrize(("line", "problem"), [
    ('{"x": NaN}', "NaN is not a JSON value"),
    ('{"x": -Infinity}', "-Infinity is not a JSON value"),
    ('{"x": 1e400}', "the number 1e400 is too large for a float"),
    ('{"x": ' + "1" * 5000 + "}", "line 1: Exceeds the limit"),
    ('{"x": ' + "[" * 101 + "]" * 101 + "}", "JSON nested too deeply"),
])
def test_strict_json_records(line: str, problem: str, tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace("*", r"\*")):
        tasks.read_rows(str(path))


def test_deep_but_allowed_json_and_brackets_in_text_load(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [{"x": json.loads("[" * 99 + "]" * 99)}, {"text": "[" * 500}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert tasks.read_rows(str(path)) == rows
