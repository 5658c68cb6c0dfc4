"""The package outside the repository: built-in search spaces by name, and a wheel that works on its own.

The wheel is built from a copy of the sources (pyproject.toml, README.md, sde_search/, search_spaces/), without
build isolation, so the build needs no index and leaves nothing in the repository. The slow test installs it into
a fresh venv from pyproject's own dependency list, constrained by constraints.txt, and runs the console script
from a folder outside the repository. pip does not cache downloads on every machine (behind some proxies the
responses are not cacheable), so the wheels of the pinned stack are kept in a wheelhouse, ``$SDE_WHEELHOUSE``
(default ``$SDE_CACHE/wheelhouse``, ``~/.cache/sde-search/wheelhouse``): the first run downloads them (about 0.5 GB
besides torch, which comes from pip's find-links when it is configured), later runs install with no network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from sde_search import scaffold
from sde_search.cli import main
from sde_search.config import TaskConfig, builtin_spaces, load_task_and_space

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml"))


def test_builtin_spaces_are_the_repository_folder():
    spaces = builtin_spaces()
    assert sorted(p.name for p in spaces.values()) == SPACES and "quick" in spaces
    assert all(p.read_bytes() == (ROOT / "search_spaces" / p.name).read_bytes() for p in spaces.values())
    described = TaskConfig.model_fields["search_space"].description or ""
    assert all(name in described for name in spaces)  # the key's description names every built-in space


def test_space_by_name_and_by_path_give_the_same_file(tmp_path):
    demo = str(ROOT / "examples" / "demo_masa.yaml")  # search_space: ../search_spaces/quick.yaml
    by_path = load_task_and_space(demo, None, [])[2]
    by_name = load_task_and_space(demo, "quick", [])[2]
    by_key = load_task_and_space(demo, None, ["search_space=quick"])[2]
    assert by_path.samefile(ROOT / "search_spaces" / "quick.yaml")
    assert by_name.samefile(by_path) and by_key.samefile(by_path)


def test_a_wrong_space_name_lists_the_builtin_ones(capsys):
    demo = str(ROOT / "examples" / "demo_masa.yaml")
    assert main(["--task", demo, "--check", "--space", "sde_cor"]) == 2
    names = ", ".join(Path(n).stem for n in SPACES)
    assert capsys.readouterr().err.splitlines() == [
        f"error: --space: 'sde_cor' is not a built-in search space; did you mean 'sde_core'? (built-in: {names}; "
        "a file is named by its path, e.g. spaces/mine.yaml)"]
    assert main(["--task", demo, "--check", "--set", "search_space=quik"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "search_space: 'quik' is not a built-in search space; did you mean 'quick'?" in err


def test_the_installed_package_finds_the_spaces_as_package_data():
    """The editable install (or a wheel) maps sde_search.search_spaces; no fallback to a source folder is used."""
    import importlib.util

    spec = importlib.util.find_spec("sde_search.search_spaces")
    assert spec is not None and spec.submodule_search_locations, "reinstall the package (make install)"
    folder = Path(next(iter(spec.submodule_search_locations)))
    assert sorted(p.name for p in folder.glob("*.yaml")) == SPACES


def test_dependencies_are_ranges_with_the_pins_in_constraints():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    deps = [Requirement(d) for d in pyproject["project"]["dependencies"]]
    names = {d.name for d in deps}
    assert {"torch", "ray", "mlflow", "optuna", "transformers", "peft", "plotly", "pyyaml", "pydantic"} <= names
    for dep in deps:  # a floor and a cap, never an exact pin, so the package installs beside others
        ops = {s.operator for s in dep.specifier}
        assert ops == {">=", "<"}, f"{dep}: give a compatible range"
    extras = pyproject["project"]["optional-dependencies"]
    assert {"gguf", "notebook", "test", "dev"} <= set(extras)
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert not req.extras, f"{line}: a constraints file takes no extras"
            pins[req.name.lower()] = req
    wanted = deps + [Requirement(r) for name in ("gguf", "notebook", "test") for r in extras[name]]
    for dep in wanted:  # every dependency pinned, inside its range
        pin = pins.get(dep.name.lower())
        assert pin is not None, f"{dep.name} has no pin in constraints.txt"
        version = next(iter(pin.specifier)).version
        assert dep.specifier.contains(version, prereleases=True), f"pin {pin} is outside {dep}"


def _copy_sources(dest: Path) -> Path:
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("sde_search", "search_spaces"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources with this environment's setuptools (no index needed)."""
    src = _copy_sources(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True, timeout=300)
    (found,) = out.glob("sde_search-*.whl")
    return found


def test_wheel_holds_the_spaces_starters_and_ranges(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = Parser().parsestr(zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    assert {f"sde_search/search_spaces/{n}" for n in SPACES} <= names
    assert {f"sde_search/starters/{k}.yaml" for k in scaffold.KINDS} <= names
    assert "sde_search/cli.py" in names and not any(n.startswith(("tests/", "examples/")) for n in names)
    assert {"sde_search/config/__init__.py", "sde_search/config/loading.py", "sde_search/data/records.py"} <= names
    requires = meta.get_all("Requires-Dist") or []
    assert any(r.startswith("plotly") for r in requires)  # the report's plots need it
    assert not any(s.operator == "==" for r in requires for s in Requirement(r).specifier)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 or not check, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _wheelhouse() -> Path:
    cache = os.environ.get("SDE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sde-search")
    return Path(os.environ.get("SDE_WHEELHOUSE") or os.path.join(cache, "wheelhouse"))


def _install(python: Path, wheel: Path, cwd: Path, env: dict[str, str]) -> None:
    """pyproject's dependencies (and the gguf extra) under the pins, from the wheelhouse; filled on a miss."""
    house = _wheelhouse()
    pins = ["-c", str(ROOT / "constraints.txt"), f"{wheel}[gguf]"]
    # --no-compile: byte-compiling some 150 packages costs more than the install itself
    offline = [str(python), "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", str(house),
               *pins]
    if house.is_dir() and _run(offline, cwd, env, timeout=1200, check=False).returncode == 0:
        return
    house.mkdir(parents=True, exist_ok=True)
    _run([str(python), "-m", "pip", "download", "-q", "-d", str(house), *pins], cwd, env, timeout=1800)
    for own in house.glob("sde_search-*.whl"):  # the wheel under test is given by path, never taken from here
        own.unlink()
    _run(offline, cwd, env, timeout=1200)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_works_outside_the_repository(wheel, tmp_path):
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    base = getattr(sys, "_base_executable", sys.executable)  # not this venv's python: the new venv sees none of it
    _run([base, "-m", "venv", str(venv)], work, env)
    bin_ = venv / "bin"
    started = time.monotonic()
    _install(bin_ / "python", wheel, work, env)
    install_s = time.monotonic() - started
    where = _run([str(bin_ / "python"), "-c", "import sde_search; print(sde_search.__file__)"], work, env).stdout
    assert Path(where.strip()).is_relative_to(venv)  # the installed copy, not the repository
    sde = str(bin_ / "sde-search")
    assert _run([sde, "--version"], work, env).stdout.startswith("sde-search ")
    _run([sde, "init", "masa", "starter"], work, env)
    check = _run([sde, "--task", "starter/task.yaml", "--check"], work, env).stdout
    assert "space quick.yaml" in check and "round trip: ok" in check
    _run([sde, "train", "--task", "starter/task.yaml", "--out", "trained", "--set", "train.epochs=1",
          "--set", "data.max_train=32", "--set", "data.max_eval=8"], work, env)
    assert (work / "trained" / "metrics.jsonl").is_file()
    print(f"wheel test: install {install_s:.0f} s, commands {time.monotonic() - started - install_s:.0f} s")
