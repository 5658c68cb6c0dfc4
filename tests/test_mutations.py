"""Property test: seeded random mutations of the demo task end cleanly.

Each mutant changes the demo MASA task (``examples/demo_masa.yaml``), its search space or one of its data files in
one way: a key dropped, duplicated, renamed with a typo, given another type or key type, nested, or swapped with
another value; or the file cut at a random byte. ``sde-search --task MUTANT --check`` must answer every mutant
within a timeout, with exit 0, or with exit 2 and only bounded ``error: `` lines; never a traceback, and nothing
written into the task's folder. A mutant ``--check`` accepts must not make a later run fail: a seeded few of them
are trained for real (tiny).

The mutants are drawn from ``SDE_MUTATION_SEED`` (``SDE_MUTANTS`` of them); a test id holds the seed, the mutant's
number and its mutation, e.g. ``s16-m07-task.yaml-retype_train.lr_to_huge_int``. Reproduce one with
``SDE_MUTATION_SEED=16 pytest tests/test_mutations.py -k m07``; ``-s`` prints the summary.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo_masa.yaml"
SEED = int(os.environ.get("SDE_MUTATION_SEED", "16"))
COUNT = int(os.environ.get("SDE_MUTANTS", "60"))
CHECK_TIMEOUT_S = 60
RUN_TIMEOUT_S = 180
LINE_LIMIT = 600  # no message line quotes a whole user value
REAL_RUNS = 3
SPLITS = ("train", "eval_id", "eval_ood", "test_id", "test_ood")
TINY = ["--set", "data.max_train=16", "--set", "data.max_eval=4", "--set", "data.max_test=4",
        "--set", "train.epochs=1", "--set", "train.reports_per_epoch=1", "--set", "train.report_eval_size=4"]
"""``train`` overrides that make a real run last seconds (they win over the mutant's values of these keys)."""

Path_ = tuple[Any, ...]  # a key path into a document: dict keys and list indices


# ---------------------------------------------------------------- documents


class Pairs:
    """A mapping written with a key twice (what a dict cannot hold): ``[(key, value), ...]`` in file order."""

    def __init__(self, pairs: list[tuple[Any, Any]]):
        self.pairs = pairs


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Pairs, lambda d, p: d.represent_mapping("tag:yaml.org,2002:map", p.pairs))
_Dumper.ignore_aliases = lambda self, data: True  # a value used twice (swap, duplicate) is written out twice


def deep(levels: int) -> str:
    """A stand-in for ``levels`` nested lists, put into the file's text after dumping (dumpers recurse)."""
    return f"@@DEEP{levels}@@"


def _undeep(text: str) -> str:
    return re.sub(r"['\"]?@@DEEP(\d+)@@['\"]?", lambda m: "[" * int(m[1]) + "1" + "]" * int(m[1]), text)


def _json(value: Any) -> str:
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_json(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, dict):
        return _json(Pairs(list(value.items())))
    if isinstance(value, list):
        return "[" + ", ".join(_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # NaN and Infinity as Python writes them (not JSON)


def dump(name: str, doc: Any) -> bytes:
    """A document as its file's bytes: YAML for ``*.yaml``, else JSON lines (a list of records)."""
    if name.endswith(".yaml"):
        text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10**9)
    else:
        text = "".join(_json(record) + "\n" for record in doc)
    return _undeep(text).encode("utf-8")


def base_documents() -> dict[str, Any]:
    """The demo task, its space and its data files, as a self-contained folder: file name -> document."""
    task = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    space = yaml.safe_load((DEMO.parent / task["search_space"]).read_text(encoding="utf-8"))
    root = DEMO.parent / task["data"]["root"]
    docs: dict[str, Any] = {"task.yaml": task, "space.yaml": space}
    for split in SPLITS:
        name = task["data"].get(split)
        if name:
            docs[f"data/{name}"] = [json.loads(line) for line in (root / name).read_text(encoding="utf-8").splitlines()
                                    if line.strip()]
    task["data"]["root"] = "data"
    task["search_space"] = "space.yaml"
    return docs


# ---------------------------------------------------------------- mutations


RETYPES: list[tuple[str, Callable[[], Any]]] = [
    ("str", lambda: "abc"), ("empty_str", lambda: ""), ("int_0", lambda: 0), ("int_-1", lambda: -1),
    ("int_7", lambda: 7), ("huge_int", lambda: 10**40), ("float", lambda: 0.5), ("float_-2.5", lambda: -2.5),
    ("nan", lambda: math.nan), ("inf", lambda: math.inf), ("true", lambda: True), ("false", lambda: False),
    ("null", lambda: None), ("empty_list", lambda: []), ("list", lambda: ["a", 1]), ("empty_dict", lambda: {}),
    ("dict", lambda: {"k": "v"}), ("huge_str", lambda: "x" * 100_000), ("numeric_str", lambda: "1e-4"),
    ("nul_str", lambda: "a\x00b"),
    ("nested_40", lambda: deep(40)), ("nested_5000", lambda: deep(5000)),
]
KEY_TYPES: list[tuple[str, Any]] = [("int", 1), ("bool", True), ("null", None), ("float", 1.5),
                                    ("huge_str", "k" * 100_000)]


def _paths(value: Any, prefix: Path_ = ()) -> list[Path_]:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    out: list[Path_] = []
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


def _get(doc: Any, path: Path_) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _parent_is_dict(doc: Any, path: Path_) -> bool:
    return isinstance(_get(doc, path[:-1]), dict)


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def _revalue(rng: random.Random, value: Any, leaves: list[Any]) -> Any:
    """Another value of the same type: a number scaled or moved, a flipped bool, another string of the file."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        options = [value + 1, value - 1, -value, value * 10, value * 1000, 2, 10**6, 2**31, 2**63]
    elif isinstance(value, float):
        options = [value * 10, value / 10, value * 1000, -value, 1.0, 1.0e-30, 1.0e30, 1.0e300]
    elif isinstance(value, str):
        options = [v for v in leaves if isinstance(v, str)] + [value.upper(), value + " ", value * 3]
    else:
        options = ["abc"]
    return rng.choice([o for o in options if o != value] or ["abc"])


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def _typo(rng: random.Random, key: str) -> str:
    i = rng.randrange(len(key))
    options = [key[:i] + key[i + 1:], key[:i] + key[i] * 2 + key[i:], key + "s", key.capitalize(),
               key[:i] + key[i + 1:i + 2] + key[i:i + 1] + key[i + 2:]]
    changed = [o for o in options if o and o != key]
    return rng.choice(changed) if changed else key + "_"


def _replace_key(mapping: dict[Any, Any], old: Any, new: Any) -> dict[Any, Any]:
    """The mapping with ``old`` renamed ``new`` in its place (a clash keeps both, as a duplicate)."""
    return {(new if k == old else k): v for k, v in mapping.items()} if new not in mapping else \
        Pairs([((new if k == old else k), v) for k, v in mapping.items()])


def _set(doc: Any, path: Path_, value: Any) -> Any:
    """``doc`` with the value at ``path`` replaced (the root when ``path`` is empty); mutates in place."""
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def mutate(rng: random.Random, name: str, doc: Any) -> tuple[str, Any] | None:
    """One structural mutation of ``doc`` (mutated in place or replaced): (what was done, the new document).

    Data files (a list of records) are mutated inside one record; None when the drawn mutation does not apply.
    """
    data = not name.endswith(".yaml")
    scope: Path_ = (rng.randrange(len(doc)),) if data else ()
    paths = _paths(_get(doc, scope), scope)
    keyed = [p for p in paths if _parent_is_dict(doc, p)]
    kind = rng.choice(["drop", "duplicate", "retype", "retype", "revalue", "revalue", "nest", "rename", "swap"]
                      + ([] if data else ["key_type"]))
    if kind in ("drop", "duplicate", "rename", "key_type") and not keyed:
        return None
    if kind == "drop":
        path = rng.choice(paths)
        parent = _get(doc, path[:-1])
        del parent[path[-1]]
        return f"drop {_dotted(path)}", doc
    if kind == "duplicate":
        path = rng.choice(keyed)
        parent, key = _get(doc, path[:-1]), path[-1]
        label, make = rng.choice([("same value", lambda: parent[key]), *RETYPES[:13]])
        pairs = [(k, v) for k, v in parent.items()]
        where = rng.randrange(len(pairs) + 1)
        pairs.insert(where, (key, make()))
        return f"duplicate {_dotted(path)} ({label})", _set(doc, path[:-1], Pairs(pairs))
    if kind == "retype":
        path = rng.choice(paths + [scope] * (1 if data else 0))
        label, make = rng.choice(RETYPES)
        return f"retype {_dotted(path)} to {label}", _set(doc, path, make())
    if kind == "revalue":
        leaves = [p for p in paths if not isinstance(_get(doc, p), (dict, list))]
        if not leaves:
            return None
        path = rng.choice(leaves)
        new = _revalue(rng, _get(doc, path), [_get(doc, p) for p in leaves])
        return f"revalue {_dotted(path)} to {_shown(new)}", _set(doc, path, new)
    if kind == "nest":
        path = rng.choice(paths)
        value, leaf = _get(doc, path), path[-1]
        how, nested = rng.choice([("list", [value]), ("list_of_list", [[value]]), ("dict", {"value": value}),
                                  ("same_key", {leaf if isinstance(leaf, str) else "item": value})])
        return f"nest {_dotted(path)} in {how}", _set(doc, path, nested)
    if kind == "rename":
        path = rng.choice([p for p in keyed if isinstance(p[-1], str)] or keyed)
        new = _typo(rng, str(path[-1]))
        return f"rename {_dotted(path)} to {new}", _set(doc, path[:-1], _replace_key(_get(doc, path[:-1]), path[-1],
                                                                                      new))
    if kind == "key_type":
        path = rng.choice(keyed)
        label, new = rng.choice(KEY_TYPES)
        return f"key {_dotted(path)} as {label}", _set(doc, path[:-1], _replace_key(_get(doc, path[:-1]), path[-1],
                                                                                     new))
    # swap two values, neither inside the other
    first = rng.choice(paths)
    others = [p for p in paths if p[:len(first)] != first and first[:len(p)] != p]
    if not others:
        return None
    second = rng.choice(others)
    a, b = _get(doc, first), _get(doc, second)
    _set(doc, first, b)
    _set(doc, second, a)
    return f"swap {_dotted(first)} with {_dotted(second)}", doc


@dataclass(frozen=True)
class Mutant:
    """One mutated file of the demo task's folder."""

    index: int
    target: str  # the file changed, relative to the folder
    what: str
    content: bytes

    @property
    def id(self) -> str:
        """The test id: seed, number, file and mutation (``-k m07`` selects it)."""
        what = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.what)[:70]
        return f"s{SEED}-m{self.index:02d}-{Path(self.target).name}-{what}"

    @property
    def group(self) -> str:
        """``task``, ``space`` or ``data``."""
        return "data" if self.target.startswith("data/") else self.target.removesuffix(".yaml")


def make_mutant(index: int, docs: dict[str, Any], files: dict[str, bytes]) -> Mutant:
    """Mutant ``index`` of seed :data:`SEED`: one file, one mutation (the same every run)."""
    rng = random.Random(f"{SEED}-{index}")
    while True:
        target = rng.choices(["task.yaml", "space.yaml", "data"], weights=[5, 3, 3])[0]
        if target == "data":
            target = rng.choice([n for n in docs if n.startswith("data/")])
        if rng.random() < 0.12:
            cut = rng.randrange(len(files[target]))
            return Mutant(index, target, f"truncate at byte {cut} of {len(files[target])}", files[target][:cut])
        doc = json.loads(json.dumps(docs[target]))  # a deep copy
        done = mutate(rng, target, doc)
        if done is not None:
            return Mutant(index, target, done[0], dump(target, done[1]))


DOCS = base_documents()
FILES = {name: dump(name, doc) for name, doc in DOCS.items()}
MUTANTS = [make_mutant(i, DOCS, FILES) for i in range(COUNT)]


# ---------------------------------------------------------------- running


@dataclass
class Outcome:
    """How one command ended."""

    rc: int | None  # None: timed out
    stdout: str
    stderr: str
    seconds: float
    created: list[str]


def write_case(folder: Path, mutant: Mutant | None) -> Path:
    """The demo task's folder with one file mutated (none for the control); returns the task file."""
    for name, content in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(mutant.content if mutant and name == mutant.target else content)
    return folder / "task.yaml"


def run(cmd: list[str], folder: Path, timeout: float) -> Outcome:
    """Runs ``sde-search`` in ``folder``; notes the files it left there."""
    before = {p for p in folder.rglob("*")}
    env = {**os.environ, "SDE_CACHE": str(folder.parent / "cache"), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "sde_search.cli", *cmd], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, _text(exc.stdout), _text(exc.stderr)
    created = sorted(str(p.relative_to(folder)) for p in set(folder.rglob("*")) - before)
    return Outcome(rc, out, err, time.perf_counter() - t0, created)


def _text(output: bytes | str | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def check_faults(outcome: Outcome) -> list[str]:
    """What breaks the promise in a ``--check`` outcome (empty: clean)."""
    faults = []
    if outcome.rc is None:
        faults.append(f"no answer within {CHECK_TIMEOUT_S} s")
    elif outcome.rc not in (0, 2):
        faults.append(f"exit {outcome.rc}")
    if "Traceback" in outcome.stderr:
        faults.append("a traceback")
    if outcome.rc == 2:
        lines = outcome.stderr.splitlines()
        if not lines:
            faults.append("exit 2 without a message")
        faults.extend(f"not an error line: {line[:120]!r}" for line in lines if not line.startswith("error: "))
        faults.extend(f"a {len(line)}-character line: {line[:120]!r}..." for line in lines if len(line) > LINE_LIMIT)
    if outcome.created:
        faults.append(f"wrote {outcome.created[:5]}")
    return faults


def _short(text: str, limit: int = 400) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Mutant, Outcome, Path]]:
    """Every mutant through ``--check``, two at a time: mutant id -> (mutant, outcome, its task file)."""
    top = tmp_path_factory.mktemp("mutants")

    def one(mutant: Mutant) -> tuple[Mutant, Outcome, Path]:
        folder = top / f"m{mutant.index:02d}"
        task = write_case(folder, mutant)
        return mutant, run(["--task", str(task), "--check"], folder, CHECK_TIMEOUT_S), task

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = {m.id: r for m, r in zip(MUTANTS, pool.map(one, MUTANTS), strict=True)}
    print(f"\n{summary(results)}\n{len(MUTANTS)} checks in {time.perf_counter() - t0:.1f} s")
    return results


def summary(results: dict[str, tuple[Mutant, Outcome, Path]]) -> str:
    """Counts by exit code, then each mutant that broke the promise: its id, mutation and output."""
    outcomes = [o for _, o, _ in results.values()]
    lines = [f"seed {SEED}: {len(outcomes)} mutants: {sum(o.rc == 2 for o in outcomes)} exit 2, "
             f"{sum(o.rc == 0 for o in outcomes)} exit 0, {sum(o.rc not in (0, 2) for o in outcomes)} other"]
    for mutant_id, (mutant, outcome, _) in results.items():
        faults = check_faults(outcome)
        if faults:
            lines.append(f"FAILED {mutant_id} ({mutant.target}: {mutant.what}): {'; '.join(faults)}\n"
                         f"  stderr: {_short(outcome.stderr)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- tests


def test_the_unmutated_copy_is_accepted(tmp_path: Path) -> None:
    task = write_case(tmp_path / "case", None)
    outcome = run(["--task", str(task), "--check"], task.parent, CHECK_TIMEOUT_S)
    assert outcome.rc == 0, outcome.stderr
    assert not outcome.created


def test_mutants_are_seeded_and_varied() -> None:
    again = [make_mutant(i, base_documents(), FILES) for i in range(COUNT)]
    assert [(m.target, m.what, m.content) for m in again] == [(m.target, m.what, m.content) for m in MUTANTS]
    assert len({m.id for m in MUTANTS}) == len(MUTANTS)
    assert {m.group for m in MUTANTS} == {"task", "space", "data"}
    assert all(m.content != FILES[m.target] or m.what.startswith("swap") for m in MUTANTS)


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.id)
def test_check_answers_cleanly(mutant: Mutant, checked: dict[str, tuple[Mutant, Outcome, Path]]) -> None:
    _, outcome, _ = checked[mutant.id]
    faults = check_faults(outcome)
    assert not faults, (f"{mutant.id}: {mutant.target}: {mutant.what}: {'; '.join(faults)}\n"
                        f"stderr: {_short(outcome.stderr, 2000)}")


def test_check_summary(checked: dict[str, tuple[Mutant, Outcome, Path]]) -> None:
    text = summary(checked)
    assert "FAILED" not in text, text
    outcomes = [o for _, o, _ in checked.values()]
    assert any(o.rc == 2 for o in outcomes) and any(o.rc == 0 for o in outcomes), text


HUGE = "x" * 100_000


def _put(path: Path_, value: Any) -> Callable[[Any], Any]:
    return lambda doc: _set(doc, path, value)


def _rekey(path: Path_, key: Any) -> Callable[[Any], Any]:
    return lambda doc: _set(doc, path[:-1], _replace_key(_get(doc, path[:-1]), path[-1], key))


FOUND: dict[str, tuple[str, Callable[[Any], Any], str]] = {
    # Classes the random mutants found (seeds 1, 2, 3 and 16), pinned: file, edit, expected message.
    # Messages quoting a huge value or key in full:
    "space_value_huge": ("space.yaml", _put(("design", "reasoning"), HUGE), "design.reasoning: 'xxx"),
    "task_key_huge": ("task.yaml", _rekey(("data", "eval_ood"), "k" * 100_000), "data.kkk"),
    "record_label_huge": ("data/dev.jsonl", _put((3, "labels", "patio food"), HUGE), "aspect 'patio food': label 'xxx"),
    "label_value_huge": ("task.yaml", _put(("labels", "values", 0), HUGE), "labels.numbers: ['positive']"),
    "data_root_huge": ("task.yaml", _put(("data", "root"), HUGE), "data.train: "),
    "tracking_path_huge": ("task.yaml", _put(("tracking",), {"uri": f"sqlite:////{HUGE}/mlflow.db"}),
                           "tracking.uri: the folder /xxx"),
    # A path too long for the file system (or holding a NUL byte) raised OSError / ValueError:
    "model_name_huge": ("task.yaml", _put(("model", "name"), HUGE), "model.name: 'xxx"),
    "search_space_huge": ("task.yaml", _put(("search_space",), HUGE), "search_space: 'xxx"),  # a (long) name
    "search_space_nul": ("task.yaml", _put(("search_space",), "a\x00b.yaml"), "search_space: file not found"),
    "data_root_nul": ("task.yaml", _put(("data", "root"), "a\x00b"), "embedded null byte"),
    # Non-finite floats: resources.cpu .inf raised OverflowError; lr .inf was accepted:
    "resources_inf": ("space.yaml", _put(("resources", "cpu"), math.inf), "resources.cpu: Input should be a finite"),
    "lr_inf": ("task.yaml", _put(("train", "lr"), math.inf), "train.lr: Input should be a finite number"),
    # Accepted by --check, then failed the run (RuntimeError overflow, out of memory, file name too long):
    "lr_huge": ("task.yaml", _put(("train", "lr"), 1.0e38), "train.lr: Input should be less than or equal to 1"),
    "lora_rank_huge": ("task.yaml", _put(("train", "lora_rank"), 100_000),
                       "train.lora_rank: 100000 is above the model's hidden size 128"),
    "space_lora_rank_huge": ("space.yaml", _put(("train",), {"lora_rank": [8, 10**40]}),
                             "train.lora_rank: 10000000000000000000000000000000000000000 is above"),
    "name_long": ("task.yaml", _put(("name",), "n" * 150), "name: String should match pattern"),
}


@pytest.mark.parametrize("case", FOUND)
def test_found_classes_stay_fixed(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sde_search import cli

    name, edit, expect = FOUND[case]
    task = write_case(tmp_path / "case", None)
    doc = edit(json.loads(json.dumps(DOCS[name])))
    (task.parent / name).write_bytes(dump(name, doc))
    assert cli.main(["--task", str(task), "--check"]) == 2
    err = capsys.readouterr().err
    assert expect in err, err[:3000]
    outcome = Outcome(2, "", err, 0.0, [])
    assert not check_faults(outcome), check_faults(outcome)


def space_trial_args(space_file: Path, rng: random.Random) -> list[str]:
    """``train`` arguments for one trial of a mutated space: a design of it, and its training values."""
    from sde_search.config import Range, load_space

    space = load_space(space_file)
    design = ",".join(f"{dim}={rng.choice(values)}" for dim, values in space.design_choices().items())
    args = ["--design", design]
    for key, value in space.train.items():
        if isinstance(value, Range):
            value = rng.choice([value.low, value.high])
            value = int(value) if space.train[key].type == "int" else value
        elif isinstance(value, list):
            value = rng.choice(value)
        args += ["--set", f"train.{key}={json.dumps(value)}"]
    return args


def accepted_sample(checked: dict[str, tuple[Mutant, Outcome, Path]]) -> list[tuple[Mutant, Path]]:
    """A seeded few of the mutants ``--check`` accepted: one of each file group first, then any."""
    accepted = [(m, task) for m, o, task in checked.values() if o.rc == 0]
    random.Random(SEED).shuffle(accepted)
    picked = [next(a for a in accepted if a[0].group == g) for g in ("task", "space", "data")
              if any(a[0].group == g for a in accepted)]
    picked += [a for a in accepted if a not in picked]
    return picked[:REAL_RUNS]


@pytest.mark.slow
def test_accepted_mutants_train(checked: dict[str, tuple[Mutant, Outcome, Path]]) -> None:
    """What ``--check`` accepts, a tiny real run of one trial (task, data and the space's values) accepts too."""
    sample = accepted_sample(checked)
    assert sample, summary(checked)

    def one(item: tuple[Mutant, Path]) -> tuple[Mutant, list[str], Outcome]:
        mutant, task = item
        extra = space_trial_args(task.parent / "space.yaml", random.Random(f"{SEED}-{mutant.index}")) \
            if mutant.group == "space" else []
        cmd = ["train", "--task", str(task), *extra, *TINY]
        return mutant, cmd, run(cmd, task.parent, RUN_TIMEOUT_S)

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(one, sample))
    report = [f"{m.id} ({m.target}: {m.what}): exit {o.rc} in {o.seconds:.1f} s"
              + ("" if o.rc == 0 and "Traceback" not in o.stderr else
                 f"\n  command: sde-search {' '.join(cmd)}\n  stderr: {_short(o.stderr, 3000)}")
              for m, cmd, o in runs]
    print("\n" + "\n".join(report))
    assert all(o.rc == 0 and "Traceback" not in o.stderr for _, _, o in runs), "\n".join(report)
